"""The reward model: `mini-llm align reward --base RUN --data PAIRS.jsonl`.

The transformer of a trained model with a scalar head on its last real token (the end of the
response, under right padding), trained with the Bradley-Terry loss on {"prompt", "chosen",
"rejected"} lines through the shared training loop. Evaluation: the loss and the accuracy
(share of held-out pairs whose chosen response scores higher).
"""

import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint
from ..errors import CheckpointError
from ..loop import Task, fit, seeded
from ..model import GPT
from .batches import collate_pairs, pick
from .losses import bradley_terry_loss
from .runs import (device_of, finish_align, load_chat_model, mean_over, new_align_run, read_examples,
                   split_val, turn_encoder)

PAIR_FIELDS = ("prompt", "chosen", "rejected")


class RewardModel(nn.Module):
    """body: a GPT; head: its last layer's output at a sequence's last real token -> a scalar."""

    def __init__(self, body):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)  # every reward starts at 0: the BT loss starts at log 2
        nn.init.zeros_(self.head.bias)

    def forward(self, ids, lengths):
        """ids (B, T) right-padded, lengths (B,) -> rewards (B,)."""
        h = self.body.features(ids)  # (B, T, C)
        last = h[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return self.head(last).squeeze(-1)

    param_groups = GPT.param_groups  # decay matrices, not norms or biases


def load_reward_model(path, device="cpu"):
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("align", {}).get("stage") != "reward":
        raise CheckpointError(f"{path} is not a reward model (`mini-llm align reward` writes one)")
    model = RewardModel(GPT(ckpt.config))
    model.load_state_dict(ckpt.model_state)
    return model.to(device).eval(), ckpt


def encode_pairs(tokenizer, block_size, truncate):
    encode = turn_encoder(tokenizer, block_size, truncate)
    return lambda where, row: (encode(where, row, "chosen"), encode(where, row, "rejected"))


def reward_task(train, val, cfg, device, center_rewards_coefficient=None):
    held_out = val[: cfg.eval_iters * cfg.batch_size]

    def scores(model, pairs):
        b = collate_pairs(pairs).to(device)
        return model(b.ids, b.lengths).chunk(2)

    def batch(it, micro):
        return [train[i] for i in pick(len(train), cfg.batch_size, seeded(cfg.seed, "reward", it, micro))]

    def loss(model, pairs):
        return bradley_terry_loss(*scores(model, pairs), center_rewards_coefficient)

    def evaluate(model):
        def chunk(pairs):
            value, metrics = loss(model, pairs)
            return {"val_loss": value, "val_accuracy": metrics["rewards/accuracies"]}
        return mean_over(held_out, cfg.batch_size, chunk)

    mean_len = sum(len(c.ids) + len(r.ids) for c, r in train) / len(train)
    return Task(batch, loss, evaluate, round(cfg.batch_size * cfg.grad_accum * mean_len))


def train_reward_model(cfg, base, val_data=None, truncate=False, limit=None, center_rewards_coefficient=None):
    device = device_of(cfg)
    body, tokenizer, _ = load_chat_model(base, device)
    encode = encode_pairs(tokenizer, body.config.block_size, truncate)
    pairs = read_examples(cfg.data, PAIR_FIELDS, encode, limit)
    train, val = split_val(pairs, read_examples(val_data, PAIR_FIELDS, encode) if val_data else None)
    model = RewardModel(body).to(device)
    run = new_align_run(cfg, model, tokenizer, {"stage": "reward", "base": str(base), "data": str(cfg.data)})
    print(f"reward model: {len(train)} training and {len(val)} validation pairs")
    summary = fit(run, reward_task(train, val, cfg, device, center_rewards_coefficient))
    return finish_align(run, summary, {"train_pairs": len(train), "val_pairs": len(val)})
