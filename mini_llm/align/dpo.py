"""Direct preference optimization: `mini-llm align dpo --base SFT_RUN --data PAIRS.jsonl --beta B`.

The policy starts as the model of --base and learns from {"prompt", "chosen", "rejected"}
lines; the reference (--reference, default the same run) stays frozen. Its sequence log-probs
never change, so they are computed once before training (TRL's precompute_ref_log_probs) and
each step runs the policy alone on the chosen and rejected responses (one batch of 2B).
"""

import torch

from ..errors import ConfigError
from ..loop import Task, fit, seeded
from .batches import collate_pairs, pick
from .losses import DPO_LOSS_TYPES, dpo_loss, sequence_logps
from .reward import PAIR_FIELDS, encode_pairs
from .runs import (check_same_shape, device_of, finish_align, load_chat_model, mean_over, new_align_run,
                   read_examples, split_val)


@torch.no_grad()
def reference_logps(reference, pairs, batch_size, device):
    """[(log pi_ref(chosen), log pi_ref(rejected))] for each pair."""
    out = []
    for i in range(0, len(pairs), batch_size):
        b = collate_pairs(pairs[i:i + batch_size]).to(device)
        chosen, rejected = sequence_logps(reference(b.ids)[0], b.labels).chunk(2)
        out += zip(chosen.tolist(), rejected.tolist())
    return out


def dpo_task(train, val, cfg, device, beta, loss_type, label_smoothing):
    """train, val: [(chosen, rejected, (ref logp chosen, ref logp rejected))]."""
    held_out = val[: cfg.eval_iters * cfg.batch_size]

    def batch(it, micro):
        return [train[i] for i in pick(len(train), cfg.batch_size, seeded(cfg.seed, "dpo", it, micro))]

    def loss(model, items):
        b = collate_pairs([(c, r) for c, r, _ in items]).to(device)
        policy_chosen, policy_rejected = sequence_logps(model(b.ids)[0], b.labels).chunk(2)
        ref = torch.tensor([logps for _, _, logps in items], device=device)
        return dpo_loss(policy_chosen, policy_rejected, ref[:, 0], ref[:, 1], beta, loss_type, label_smoothing)

    def evaluate(model):
        def chunk(items):
            value, metrics = loss(model, items)
            return {"val_loss": value, "val_reward_accuracy": metrics["rewards/accuracies"],
                    "val_reward_margin": metrics["rewards/margins"]}
        return mean_over(held_out, cfg.batch_size, chunk)

    mean_len = sum(len(c.ids) + len(r.ids) for c, r, _ in train) / len(train)
    return Task(batch, loss, evaluate, round(cfg.batch_size * cfg.grad_accum * mean_len))


def dpo(cfg, base, beta, reference=None, loss_type="sigmoid", label_smoothing=0.0, val_data=None,
        truncate=False, limit=None):
    if not beta > 0:
        raise ConfigError(f"--beta must be > 0, got {beta}")
    if loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(f"--loss-type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"--label-smoothing must be in [0, 0.5), got {label_smoothing}")
    device = device_of(cfg)
    policy, tokenizer, _ = load_chat_model(base, device)
    ref_model, ref_tokenizer, _ = load_chat_model(reference or base, device)
    check_same_shape(policy, tokenizer, ref_model, ref_tokenizer, f"the reference {reference or base}")
    ref_model.requires_grad_(False)
    encode = encode_pairs(tokenizer, policy.config.block_size, truncate)
    pairs = read_examples(cfg.data, PAIR_FIELDS, encode, limit)
    train, val = split_val(pairs, read_examples(val_data, PAIR_FIELDS, encode) if val_data else None)
    train, val = ([(c, r, logps) for (c, r), logps in zip(part, reference_logps(ref_model, part, cfg.batch_size, device))]
                  for part in (train, val))
    del ref_model
    run = new_align_run(cfg, policy, tokenizer, {"stage": "dpo", "base": str(base), "reference": str(reference or base),
                                                 "data": str(cfg.data), "beta": beta, "loss_type": loss_type,
                                                 "label_smoothing": label_smoothing})
    print(f"dpo: {len(train)} training and {len(val)} validation pairs, beta {beta}, {loss_type} loss")
    summary = fit(run, dpo_task(train, val, cfg, device, beta, loss_type, label_smoothing))
    return finish_align(run, summary, {"train_pairs": len(train), "val_pairs": len(val), "beta": beta})
