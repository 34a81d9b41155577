"""Supervised fine-tuning: `mini-llm align sft --base RUN --data FILE.jsonl`.

A base model learns to answer in the chat format from {"prompt", "response"} lines: the loss
is the cross-entropy of the response tokens only (and of the end-of-turn token that closes
them, so the model learns to stop), through the shared training loop.
"""

from ..loop import Task, fit, seeded
from .batches import collate, pick
from .losses import sft_loss
from .runs import (device_of, finish_align, load_chat_model, mean_over, new_align_run, read_examples,
                   split_val, turn_encoder)

FIELDS = ("prompt", "response")


def sft_task(train, val, cfg, device):
    """Random batches of training examples; evaluation: the response loss over the first
    eval_iters batches of the validation examples."""
    held_out = val[: cfg.eval_iters * cfg.batch_size]

    def batch(it, micro):
        rows = pick(len(train), cfg.batch_size, seeded(cfg.seed, "sft", it, micro))
        return collate([train[i] for i in rows]).to(device)

    def loss(model, b):
        return sft_loss(model(b.ids)[0], b.labels), {}

    def evaluate(model):
        def chunk_loss(examples):
            b = collate(examples).to(device)
            return sft_loss(model(b.ids)[0], b.labels)
        return mean_over(held_out, cfg.batch_size, lambda part: {"val_loss": chunk_loss(part)})

    mean_len = sum(len(e.ids) for e in train) / len(train)
    return Task(batch, loss, evaluate, round(cfg.batch_size * cfg.grad_accum * mean_len))


def sft(cfg, base, val_data=None, truncate=False, limit=None):
    """Fine-tune the model of run `base` on cfg.data; writes the run folder cfg.out."""
    device = device_of(cfg)
    model, tokenizer, ckpt = load_chat_model(base, device)
    encode = turn_encoder(tokenizer, model.config.block_size, truncate)
    examples = read_examples(cfg.data, FIELDS, encode, limit)
    val = read_examples(val_data, FIELDS, encode) if val_data else None
    train, val = split_val(examples, val)
    run = new_align_run(cfg, model, tokenizer, {"stage": "sft", "base": str(base), "data": str(cfg.data)})
    print(f"sft: {len(train)} training and {len(val)} validation examples, "
          f"{model.num_params() / 1e6:.2f}M parameters, vocabulary {ckpt.config.vocab_size} -> "
          f"{tokenizer.vocab_size} (chat markers, new rows = mean of the old)")
    summary = fit(run, sft_task(train, val, cfg, device))
    return finish_align(run, summary, {"train_examples": len(train), "val_examples": len(val)})
