"""Train the character MLP (char_mlp.py) on Tiny Shakespeare with the NumPy engine:
`mini-llm scratch train`.

Each step draws a random batch of (k characters, next character) windows from the training
split, computes the cross-entropy, backpropagates and takes an AdamW step, the learning rate
following the same warm-up + cosine schedule as the transformer's training (optim.lr_at).
Every eval_interval steps the loss on fixed batches of both splits is printed; at the end the
loss over the *whole* validation split, then a sample.
"""

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..data import TINY_SHAKESPEARE, prepare_dataset
from ..errors import ConfigError
from ..files import fetch
from ..optim import lr_at
from .char_mlp import CharMLP, sample, windows
from .optim import AdamW
from .tensor import no_grad


def setting(default, help):
    """A config field whose help text the CLI shows (mini-llm scratch train --help)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ScratchTrainConfig:
    data: str | None = None  # a text file (help text: cli.HELP); default: Tiny Shakespeare
    context: int = setting(8, "characters the model sees before the one it predicts")
    n_embd: int = setting(16, "size of each character's embedding vector")
    hidden: int = setting(512, "width of the tanh hidden layer")
    batch_size: int = setting(128, "windows per step")
    max_iters: int = setting(10000, "training steps")
    lr: float = setting(3e-3, "peak learning rate (AdamW), after a linear warm-up")
    min_lr: float = setting(3e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = setting(100, "steps of linear warm-up")
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay (matrices only)")
    eval_interval: int = setting(1000, "steps between evaluations on fixed batches")
    eval_batches: int = setting(20, "batches per split at each evaluation")
    seed: int = setting(1337, "seed of the initialisation, the batches and the sample")
    dtype: str = setting("float32", "float32 or float64")
    sample_tokens: int = 300  # characters sampled at the end, 0: none (help text: cli.HELP)

    def __post_init__(self):
        for name in ("context", "n_embd", "hidden", "batch_size", "eval_interval", "eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0 or self.sample_tokens < 0:
            raise ConfigError("max_iters, warmup_iters and sample_tokens must be >= 0")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype!r}")


def mean_loss(model, pairs, batch_size=8192):
    """Cross-entropy averaged over every row of `pairs` (n, k + 1), in chunks."""
    total = 0.0
    with no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            total += model.loss(chunk[:, :-1], chunk[:, -1]).item() * len(chunk)
    return total / len(pairs)


def train_char_mlp(cfg):
    """Train, print progress, the final losses and a sample; returns a summary dict."""
    dataset = prepare_dataset(fetch(TINY_SHAKESPEARE, cfg.data))  # characters
    splits = {name: windows(getattr(dataset, name), cfg.context) for name in ("train", "val")}
    for name, pairs in splits.items():
        if len(pairs) < 1:
            raise ConfigError(f"the {name} split is shorter than context + 1 = {cfg.context + 1}")
    vocab = dataset.tokenizer.vocab_size
    model = CharMLP(vocab, cfg.context, cfg.n_embd, cfg.hidden, cfg.seed, np.dtype(cfg.dtype))
    optimizer = AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                      weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    eval_rng = np.random.default_rng(cfg.seed + 1)  # the same evaluation rows at every eval
    eval_rows = {name: eval_rng.integers(0, len(pairs), cfg.eval_batches * cfg.batch_size)
                 for name, pairs in splits.items()}
    print(f"character MLP (NumPy engine): {model.num_params():,} parameters, context "
          f"{cfg.context}, embeddings {cfg.n_embd}, hidden {cfg.hidden}, vocabulary {vocab}, "
          f"{cfg.dtype}, batch {cfg.batch_size}, {cfg.max_iters} steps")

    bar = tqdm(total=cfg.max_iters, unit="it", dynamic_ncols=True, disable=None)
    step_ms, t_start = [], time.perf_counter()
    for it in range(cfg.max_iters + 1):
        if it % cfg.eval_interval == 0 or it == cfg.max_iters:
            losses = {name: mean_loss(model, splits[name][rows])
                      for name, rows in eval_rows.items()}
            tqdm.write(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if it == cfg.max_iters:
            break
        t0 = time.perf_counter()
        optimizer.lr = lr_at(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        batch = splits["train"][rng.integers(0, len(splits["train"]), cfg.batch_size)]
        loss = model.loss(batch[:, :-1], batch[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_ms.append((time.perf_counter() - t0) * 1000)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", ms=f"{step_ms[-1]:.2f}", refresh=False)
    bar.close()
    train_seconds = time.perf_counter() - t_start

    val_loss = mean_loss(model, splits["val"])
    summary = {"val_loss": val_loss, "val_positions": len(splits["val"]),
               "train_seconds": train_seconds,
               "median_ms_per_step": statistics.median(step_ms) if step_ms else None}
    print(f"done: {cfg.max_iters} steps in {train_seconds:.0f} s "
          f"(median {summary['median_ms_per_step'] or 0:.2f} ms/step); val loss over the whole "
          f"validation split ({len(splits['val']):,} positions): {val_loss:.4f} nats/char")
    if cfg.sample_tokens:
        tok = dataset.tokenizer
        ids = sample(model, tok.stoi.get("\n", 0), cfg.sample_tokens, np.random.default_rng(cfg.seed))
        print("sample:\n" + tok.decode(ids))
    return summary
