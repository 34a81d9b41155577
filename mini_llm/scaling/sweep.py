"""`mini-llm scaling sweep`: train a grid of models through the shared training loop and write
the run table (runs.csv) that `mini-llm scaling fit` reads.

Two designs:
  isoflop  for each compute budget C, models of several sizes N, each trained on the tokens
           D = C / F(N) that the budget buys, F(N) being the training FLOPs per token of that
           model, attention term included (costs.py: 6 N_mm + 12 L T C), so that every run of a
           budget really spends C. The sizes are spread by tokens per parameter, D/N from 4 to
           1024, so that the budget's best size lies inside them (a first sweep with D/N 1 to 256
           found the smallest model best at every budget: tiny character models want many
           tokens per parameter).
  grid     every size against every token count (Kaplan et al.'s N x D grid).

One rule gives a model its shape from N (shape_for): about 12 L C^2 non-embedding parameters
for L layers of width C, kept at C / L near 32 (depth grows as N^(1/3), width as N^(1/3) too,
each layer a multiple of 8 wide, heads of 8), so that factors of two in N stay distinct shapes
even at a few thousand parameters. Every run gets
a learning-rate schedule of its own length (warm-up 5%, cosine to a tenth: Chinchilla's point
that a schedule longer than the run overstates the loss) and ends with an evaluation on the
validation split; that loss is the table's `loss`. A run folder that holds a summary.json is
done and skipped; one killed midway resumes from its last checkpoint.

A small budget on a small text is data-limited: `epochs` says how many passes over the training
split a run made. Tiny Shakespeare is about 1M characters, so the larger budgets repeat data.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import TINY_SHAKESPEARE, prepare_dataset
from ..files import atomic_write_bytes, fetch
from ..errors import ConfigError
from ..model import GPTConfig
from ..train import TrainConfig, train
from .costs import model_costs
from .parametric import ScalingLaw

HEAD_SIZE, ASPECT = 8, 32  # the shape rule: C = n_head * 8, C / n_layer near 32
TOKENS_PER_PARAM = (4, 16, 64, 256, 1024)  # isoflop: D / N of the sizes tried at each budget
MIN_ITERS = 10  # fewer optimizer steps than this is no training run
COLUMNS = ("name", "design", "budget", "params", "params_with_embeddings", "tokens", "flops", "loss",
           "epochs", "seconds", "n_layer", "n_head", "n_embd", "iters", "batch_size", "block_size",
           "lr", "seed", "data")


@dataclass
class Settings:
    """What every run of a sweep shares."""

    out: str
    data: str | None = None  # default: Tiny Shakespeare
    block_size: int = 64
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 1337
    eval_iters: int = 20
    device: str = "auto"

    def dataset(self):
        """The text as characters: (vocabulary size, tokens in the training split)."""
        d = prepare_dataset(fetch(TINY_SHAKESPEARE, self.data))
        return d.tokenizer.vocab_size, len(d.train)

    def tokens_per_iter(self):
        return self.batch_size * self.block_size


def shape_for(n_params, vocab_size, block_size):
    """The model of about n_params non-embedding parameters under the shape rule."""
    depth = max(1, round((n_params / (12 * ASPECT ** 2)) ** (1 / 3)))
    width = HEAD_SIZE * max(1, round(math.sqrt(n_params / (12 * depth)) / HEAD_SIZE))
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_embd=width,
                     n_head=width // HEAD_SIZE, n_layer=depth)


def shape_name(config):
    return f"L{config.n_layer}-W{config.n_embd}"


def costs(config, batch_size=1):
    return model_costs(config, batch_size, activations=False)


@dataclass
class Planned:
    name: str
    design: str
    budget: float  # the compute budget C of an isoflop run; 0 for the grid
    config: GPTConfig
    iters: int


def plan_isoflop(budgets, s, vocab_size):
    """Runs for each budget: the sizes whose D/N spans TOKENS_PER_PARAM, each trained on the
    tokens its budget buys (whole iterations: the run's flops are recomputed from them)."""
    runs = []
    for budget in budgets:
        seen = set()
        for ratio in TOKENS_PER_PARAM:
            config = shape_for(math.sqrt(budget / (6 * ratio)), vocab_size, s.block_size)
            if (config.n_layer, config.n_embd) in seen:  # two ratios rounded to the same shape
                continue
            seen.add((config.n_layer, config.n_embd))
            tokens = budget / costs(config).training_flops()
            iters = round(tokens / s.tokens_per_iter())
            if iters < MIN_ITERS:
                raise ConfigError(
                    f"a budget of {budget:.3g} FLOPs buys {iters} iterations of {s.tokens_per_iter()} "
                    f"tokens for a model of {costs(config).non_embedding} parameters; "
                    f"give budgets of at least {budget * MIN_ITERS / max(iters, 0.5):.2g}")
            runs.append(Planned(f"C{budget:.0e}-{shape_name(config)}", "isoflop", budget, config, iters))
    return runs


def plan_grid(sizes, token_counts, s, vocab_size):
    runs = []
    for n in sizes:
        config = shape_for(n, vocab_size, s.block_size)
        for tokens in token_counts:
            iters = round(tokens / s.tokens_per_iter())
            if iters < MIN_ITERS:
                raise ConfigError(f"{tokens:.3g} tokens are {iters} iterations of {s.tokens_per_iter()} "
                                  f"tokens; give at least {MIN_ITERS * s.tokens_per_iter()}")
            runs.append(Planned(f"{shape_name(config)}-D{tokens:.0e}", "grid", 0.0, config, iters))
    return runs


def run_sweep(planned, s):
    """Train what is not done yet (one progress bar over all runs, weighted by compute), then
    write runs.csv with every run of the plan. Returns the rows."""
    _, train_tokens = s.dataset()
    rows = [None] * len(planned)
    with tqdm(total=sum(flops_of(p, s) for p in planned), unit="FLOP", unit_scale=True,
              desc="sweep", disable=None) as bar:
        for i, p in enumerate(planned):
            rows[i] = row(p, s, train_one(p, s, Path(s.out) / "runs" / p.name), train_tokens)
            bar.update(flops_of(p, s))
    write_table(Path(s.out) / "runs.csv", rows)
    return rows


def flops_of(p, s):
    """The training compute of run p: its tokens times its FLOPs per token."""
    return p.iters * s.tokens_per_iter() * costs(p.config).training_flops()


def train_one(p, s, folder):
    """The summary of run p: read if it finished before, else trained (or resumed)."""
    summary = folder / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    cfg = TrainConfig(out=str(folder), data=s.data, batch_size=s.batch_size, max_iters=p.iters,
                      lr=s.lr, min_lr=s.lr / 10, warmup_iters=max(1, p.iters // 20),
                      eval_interval=max(1, p.iters // 4), eval_iters=s.eval_iters,
                      log_interval=max(1, p.iters // 10), seed=s.seed, sample_tokens=0, device=s.device)
    if (folder / "ckpt.safetensors").is_file():
        return train({}, cfg, resume={"max_iters": p.iters})
    return train({k: v for k, v in p.config.to_dict().items() if k != "vocab_size"}, cfg)


def row(p, s, summary, train_tokens):
    k = costs(p.config)
    tokens = p.iters * s.tokens_per_iter()
    return {"name": p.name, "design": p.design, "budget": p.budget, "params": k.non_embedding,
            "params_with_embeddings": k.total, "tokens": tokens, "flops": flops_of(p, s),
            "loss": summary["val_loss"], "epochs": round(tokens / train_tokens, 3),
            "seconds": round(summary["wall_s"], 2), "n_layer": p.config.n_layer,
            "n_head": p.config.n_head, "n_embd": p.config.n_embd, "iters": p.iters,
            "batch_size": s.batch_size, "block_size": s.block_size, "lr": s.lr, "seed": s.seed,
            "data": s.data or "tinyshakespeare"}


def write_table(path, rows):
    lines = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def predict(fit_json, budget, s):
    """The size that the approach-3 law of fit_json says is best for `budget` (among the shapes
    of the rule, with each one's real FLOPs per token), and the loss the law predicts for it."""
    fit = json.loads(Path(fit_json).read_text())["approach3"]
    if "error" in fit:
        raise ConfigError(f"{fit_json} has no approach-3 fit to predict with: {fit['error']}")
    law = ScalingLaw(*(fit[k] for k in ("E", "A", "B", "alpha", "beta")))
    vocab_size, _ = s.dataset()
    best = None
    for n in np.geomspace(1e3, 1e8, 200):  # every shape of the rule in that range, once
        config = shape_for(n, vocab_size, s.block_size)
        k = costs(config)
        iters = round(budget / k.training_flops() / s.tokens_per_iter())
        if iters < MIN_ITERS:
            continue
        predicted = float(law.loss(k.non_embedding, iters * s.tokens_per_iter()))
        if best is None or predicted < best[0]:
            best = (predicted, Planned(f"C{budget:.0e}-{shape_name(config)}", "isoflop", budget, config, iters))
    if best is None:
        raise ConfigError(f"a budget of {budget:.3g} FLOPs buys fewer than {MIN_ITERS} iterations of any model")
    return best


def check_prediction(fit_json, budget, s):
    """Train the run that fit_json predicts best for `budget`; write check.json with the
    predicted and the measured loss. Returns that record."""
    out = Path(s.out) / "check.json"
    predicted, p = predict(fit_json, budget, s)
    _, train_tokens = s.dataset()
    measured = row(p, s, train_one(p, s, Path(s.out) / "runs" / p.name), train_tokens)
    record = {**measured, "fit": str(fit_json), "predicted_loss": predicted,
              "error": measured["loss"] - predicted,
              "relative_error": (measured["loss"] - predicted) / predicted}
    atomic_write_bytes(out, (json.dumps(record, indent=2) + "\n").encode())
    return record
