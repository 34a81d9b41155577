"""What the align commands share: loading a model with the chat markers, reading examples,
and setting up a run for the shared loop (loop.fit) the way pretraining does.

An align run folder holds what a pretraining run holds (ckpt.safetensors, metrics.jsonl,
summary.json, loss.png); its checkpoint's meta adds "align": the stage and where it started.
SFT and DPO checkpoints are ordinary models (`mini-llm sample` reads them); a reward model's
is not (reward.py loads it).
"""

import dataclasses
from pathlib import Path

import torch

from .. import __version__
from ..checkpoint import load_checkpoint, load_model
from ..errors import CheckpointError, DataError
from ..loop import Run, finish
from ..optim import AdamW
from ..train import TrainConfig, checkpoint_to_resume, resolve_device
from .batches import encode_turn, read_jsonl
from ..tokenizer.chat import with_chat_tokens
from .chat import grow_vocabulary

# The training settings of each stage where they differ from pretraining's defaults.
DEFAULTS = {
    "sft": dict(batch_size=16, max_iters=300, lr=1e-3, min_lr=1e-4, warmup_iters=20, eval_interval=100,
                eval_iters=10, log_interval=10, weight_decay=0.0, sample_tokens=0),
    "reward": dict(batch_size=16, max_iters=200, lr=1e-3, min_lr=1e-4, warmup_iters=20, eval_interval=50,
                   eval_iters=10, log_interval=10, weight_decay=0.0, sample_tokens=0),
    "dpo": dict(batch_size=8, max_iters=150, lr=3e-4, min_lr=3e-5, warmup_iters=10, eval_interval=50,
                eval_iters=10, log_interval=10, weight_decay=0.0, sample_tokens=0),
    # RL: one step per minibatch of a rollout; batch_size, grad_accum and eval_iters are unused
    "ppo": dict(max_iters=100, lr=1e-4, min_lr=1e-4, warmup_iters=0, eval_interval=20, log_interval=4,
                weight_decay=0.0, sample_tokens=0),
    "grpo": dict(max_iters=100, lr=1e-4, min_lr=1e-4, warmup_iters=0, eval_interval=20, log_interval=4,
                 weight_decay=0.0, sample_tokens=0),
}


def align_config(stage, given):
    """A TrainConfig: the stage's defaults, then what the user gave."""
    return TrainConfig(**{"out": f"out/{stage}", **DEFAULTS[stage], **given})


def load_chat_model(path, device="cpu"):
    """(model, chat tokenizer, checkpoint): a trained model given rows for the chat markers if
    it was trained without them (chat.grow_vocabulary: the mean of the existing rows)."""
    if load_checkpoint(path).meta.get("align", {}).get("stage") == "reward":
        raise CheckpointError(f"{path} is a reward model, not a language model")
    model, ckpt = load_model(path, device)
    tokenizer = with_chat_tokens(ckpt.tokenizer)
    return grow_vocabulary(model, tokenizer.vocab_size), tokenizer, ckpt


def check_same_shape(model, tokenizer, other, other_tokenizer, what):
    """Refuse a reference (or policy) whose model or vocabulary differs from `model`'s."""
    if other.config != model.config:
        diff = {k: (v, getattr(other.config, k)) for k, v in model.config.to_dict().items()
                if getattr(other.config, k) != v}
        raise CheckpointError(f"{what} has another shape than the policy (policy vs it: {diff})")
    if other_tokenizer.to_dict() != tokenizer.to_dict():
        raise CheckpointError(f"{what} has another tokenizer than the policy")


def read_examples(path, fields, encode, limit=None):
    """encode(where, row) for each line of a JSONL file (all lines checked first); `limit`
    keeps the first lines only."""
    rows = read_jsonl(path, fields)[:limit]
    return [encode(where, row) for where, row in rows]


def turn_encoder(tokenizer, block_size, truncate):
    def encode(where, row, response="response"):
        return encode_turn(tokenizer, row["prompt"], row[response], block_size, where, truncate)
    return encode


def split_val(examples, val_examples, val_fraction=0.1):
    """(train, val): the given validation examples, or the last val_fraction of the data."""
    if val_examples is not None:
        return examples, val_examples
    n_val = max(1, int(len(examples) * val_fraction))
    if len(examples) <= n_val:
        raise DataError(f"{len(examples)} examples are too few to hold out {n_val} for validation")
    return examples[:-n_val], examples[-n_val:]


def new_align_run(cfg, model, tokenizer, stage_meta):
    """A Run for the shared loop: a fresh AdamW over `model`, a new run folder (refused if it
    holds a checkpoint already), meta saved in every checkpoint."""
    checkpoint_to_resume({}, cfg, None)  # raises if cfg.out holds a checkpoint
    torch.manual_seed(cfg.seed)
    optimizer = AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    body = getattr(model, "body", model)  # a reward model's transformer
    meta = {"model_config": body.config.to_dict(), "tokenizer": tokenizer.to_dict(),
            "train_config": dataclasses.asdict(cfg), "version": __version__, "align": stage_meta}
    _, _, autocast = resolve_device(cfg.device, cfg.dtype)
    return Run(cfg, model.train(), optimizer, Path(cfg.out), meta, autocast=autocast)


def device_of(cfg):
    return resolve_device(cfg.device, cfg.dtype)[0]


def finish_align(run, summary, extra):
    summary.update({"params": sum(p.numel() for p in run.model.parameters()), **extra,
                    "train_config": dataclasses.asdict(run.cfg), "align": run.checkpoint_meta["align"]})
    finish(run, summary)
    return summary


def mean_over(examples, chunk, fn):
    """fn(examples[i:i+chunk]) -> {name: value} for each chunk, averaged over the chunks
    weighted by their size: metrics over a whole validation set, in batches."""
    totals = {}
    for i in range(0, len(examples), chunk):
        part = examples[i:i + chunk]
        for name, value in fn(part).items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(part)
    return {name: total / len(examples) for name, total in totals.items()}
