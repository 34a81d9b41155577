"""The training loop every stage reuses: pretraining (train.py) today; fine-tuning, reward
models, DPO and parallel training plug into the same loop with their own loss and batches.

The loop knows nothing of what is trained. A `Task` says that: the batches, the loss and the
evaluation. A `Run` holds the rest: the model, the optimizer, the settings, the run folder and
how the processes cooperate (`ranks`: one process here; the data-parallel strategies give their
own, which syncs gradients on the last micro-batch only and lets rank 0 alone log and save).

    summary = fit(Run(cfg, model, optimizer, out, checkpoint_meta), task)

One iteration is one optimizer step over cfg.grad_accum micro-batches. Every random draw of
iteration `it` is derived from (cfg.seed, it), so a resumed run repeats the losses of a run
that was never interrupted: the task draws its batches from `seeded(seed, ..., it, micro)`
and the loop seeds the dropout masks per iteration.
"""

import hashlib
import json
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import nvtx
from .checkpoint import FILE_NAME, save_checkpoint
from .errors import ConfigError, DivergedError
from .files import atomic_write_bytes
from .optim import clip_grad_norm, lr_at
from .plot import plot_runs, read_metrics


def seed_of(*key):
    """A seed that is a hash of `key`: distinct keys, e.g. (1337, "dropout", 5) and
    (1338, "dropout", 4), never share a random stream."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") >> 1


def seeded(*key):
    """A generator seeded by seed_of(*key), e.g. seeded(seed, "train", it, micro)."""
    return torch.Generator().manual_seed(seed_of(*key))


@dataclass
class Task:
    """What is trained: the part of a run that differs from stage to stage."""

    batch: Callable  # (it, micro) -> a batch on the device, the same for the same (it, micro)
    loss: Callable  # (model, batch) -> (scalar loss, {metric name: scalar tensor}) for logging
    evaluate: Callable  # (model) -> {name: float}, run under no_grad in eval mode
    tokens_per_iter: int  # tokens in one optimizer step (all micro-batches, all ranks)


class SingleProcess:
    """How the processes of a run cooperate when there is one. A parallel strategy replaces
    it (mini_llm/parallel/strategy.py): it gives each rank its part of the batch, syncs
    gradients only on the last micro-batch, clips by the norm over all ranks, averages what is
    logged, gathers sharded state for the checkpoint, and lets rank 0 alone print, log and save.

    slices=N: each micro-batch runs as N forwards and backwards of B/N rows, their gradients
    summed: the same batch in less activation memory, and the arithmetic N data-parallel ranks
    do (rank r's slice is rows [r B/N, (r+1) B/N), split_rows). For N = 2 the gradient is
    g0/2 + g1/2, which is ddp's (g0 + g1)/2 to the bit: scaling by a power of two is exact and
    a + b = b + a. A plain one-process run sums all B rows in one matmul: the same gradient up
    to float rounding (docs/stage-4-parallel.md)."""

    is_main = True
    slices = 1  # what a strategy, which runs its one slice, inherits

    def __init__(self, slices=1):
        self.slices = slices

    def local_batch(self, batch):
        """This rank's part of the global micro-batch."""
        return batch

    def step(self):
        """The context one optimizer step runs in."""
        return nullcontext()

    def micro_batch(self, last):
        """The context each micro-batch's forward and backward run in."""
        return nullcontext()

    def forward_backward(self, run, task, it):
        """The forward and backward of every micro-batch of iteration `it`, one after the
        other; returns their mean loss and metrics. A pipeline (parallel/pp.py) replaces it:
        its stages pass the micro-batches along in the order of its schedule."""
        return micro_batches(run, task, it)

    def clip_grad_norm(self, model, max_norm):
        return clip_grad_norm(model.parameters(), max_norm)

    def mean(self, value):
        """A logged value averaged over the ranks."""
        return value

    def record(self):
        """Extra fields for each train log record (ranks, global batch, bytes sent)."""
        return {}

    def for_checkpoint(self, model, optimizer):
        """(model, optimizer) whose state_dict() is the full state; every rank calls it."""
        return model, optimizer


@dataclass
class Run:
    """Everything a training loop needs besides the task."""

    cfg: object  # a train.TrainConfig, or any object with its schedule and interval fields
    model: torch.nn.Module  # what is evaluated and saved
    optimizer: torch.optim.Optimizer
    out: Path  # the run folder: ckpt.safetensors, metrics.jsonl, summary.json, loss.png
    checkpoint_meta: dict  # saved in every checkpoint, with "iter" added
    start: int = 0  # the iteration the run starts at (> 0 when resumed)
    step_model: torch.nn.Module | None = None  # what the forward runs (compiled, wrapped); default model
    autocast: object = field(default_factory=nullcontext)  # the forward's mixed-precision context
    ranks: SingleProcess = field(default_factory=SingleProcess)


def fit(run, task):
    """Train from run.start to cfg.max_iters: evaluate and save every eval_interval (and at the
    start and the end), log every log_interval. Returns the summary of the run."""
    cfg = run.cfg
    metrics = open_metrics(run) if run.ranks.is_main else None
    bar = tqdm(total=cfg.max_iters, initial=run.start, unit="it", dynamic_ncols=True,
               disable=None if run.ranks.is_main else True)
    clock = StepClock(task.tokens_per_iter)
    evaluation, t_start = {}, time.perf_counter()
    with metrics or nullcontext(), bar:
        for it in range(run.start, cfg.max_iters + 1):
            if it % cfg.eval_interval == 0 or it in (run.start, cfg.max_iters):
                evaluation = evaluate(run, task, it, metrics)
                if it > run.start:  # the last one included: the run ends on a checkpoint
                    save(run, it)
                clock.restart(it)  # evaluation time stays out of ms/iteration
            if it == cfg.max_iters:
                break
            loss, values, lr = optimizer_step(run, task, it)
            bar.update(1)
            if (it + 1) % cfg.log_interval == 0 or it + 1 == cfg.max_iters:
                record = {"kind": "train", "iter": it + 1, "loss": float(run.ranks.mean(loss)), "lr": lr,
                          **clock.lap(it + 1),  # after float(loss): the device has caught up
                          **{k: float(run.ranks.mean(v)) for k, v in values.items()},
                          **run.ranks.record()}
                check_finite(run, record)
                write_record(metrics, record)
                show_progress(run, bar, record)
    return {"iters": cfg.max_iters, **evaluation, **clock.summary(),
            "wall_s": time.perf_counter() - t_start}


def show_progress(run, bar, record):
    """The log step on the progress bar; with output going to a file or a pipe, where the bar
    stays off, as one plain line, so a log shows progress between evaluations."""
    fields = {"loss": f"{record['loss']:.4f}", "ms": f"{record['ms_per_iter']:.1f}",
              "tok_s": f"{record['tokens_per_s']:,.0f}"}
    if "bytes_sent" in record:
        fields["sent_MB"] = f"{record['bytes_sent'] / 1e6:.2f}"
    if not bar.disable:
        bar.set_postfix(**fields)
    elif run.ranks.is_main:
        print(f"iter {record['iter']}: " + ", ".join(f"{k} {v}" for k, v in fields.items()), flush=True)


def optimizer_step(run, task, it):
    """One optimizer step at iteration `it`; returns (mean loss, mean metrics, learning rate),
    the losses as tensors so the step does not wait for the device."""
    cfg = run.cfg
    lr = lr_at(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(seed_of(cfg.seed, "dropout", it))  # the same masks after a resume
    with nvtx.range(f"step {it}"), run.ranks.step():
        step_loss, step_values = run.ranks.forward_backward(run, task, it)
        with nvtx.range("optimizer"):
            if cfg.grad_clip > 0:
                run.ranks.clip_grad_norm(run.model, cfg.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    return step_loss, step_values, lr


def micro_batches(run, task, it):
    """cfg.grad_accum forwards and backwards, the gradients summed in .grad; returns the mean
    loss and metrics (tensors)."""
    cfg, model = run.cfg, run.step_model or run.model
    slices = run.ranks.slices  # 1 on the ranks of a strategy: each runs its one slice
    step_loss, step_values = 0.0, {}
    for micro in range(cfg.grad_accum):
        batch = run.ranks.local_batch(task.batch(it, micro))
        for k in range(slices):
            piece = batch if slices == 1 else tuple(split_rows(t, k, slices) for t in batch)
            with run.ranks.micro_batch(last=micro == cfg.grad_accum - 1 and k == slices - 1):
                with nvtx.range("forward"), run.autocast:
                    loss, values = task.loss(model, piece)
                with nvtx.range("backward"):
                    (loss / cfg.grad_accum / slices).backward()
            step_loss += loss.detach() / cfg.grad_accum / slices
            for name, value in values.items():
                step_values[name] = step_values.get(name, 0.0) + value.detach() / cfg.grad_accum / slices
    return step_loss, step_values


def split_rows(t, rank, size):
    """Rows [rank B/size, (rank+1) B/size) of t: a data-parallel rank's slice of a batch (or
    one of the slices of SingleProcess(slices)); B must divide by size."""
    if t.size(0) % size:
        raise ConfigError(f"a batch of {t.size(0)} sequences does not split "
                          f"over {size} ranks; use a --batch-size that divides by {size}")
    n = t.size(0) // size
    return t[rank * n:(rank + 1) * n]


@torch.no_grad()
def evaluate(run, task, it, metrics):
    """The task's evaluation at iteration `it`, logged and printed; returns its values."""
    run.model.eval()
    with run.autocast:
        values = task.evaluate(run.model)
    run.model.train()
    check_finite(run, {"kind": "eval", "iter": it, **values})  # before the checkpoint is saved
    write_record(metrics, {"kind": "eval", "iter": it, **values})
    if run.ranks.is_main:
        tqdm.write(f"step {it}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in values.items()))
    return values


def check_finite(run, record):
    """Stop on a NaN or infinite loss: a diverged run must not write a broken checkpoint, nor
    JSON that strict parsers refuse. The checkpoints saved so far stay as they were."""
    bad = {k: v for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        saved = run.out / FILE_NAME
        kept = f"the last good checkpoint, {saved}, is kept" if saved.is_file() else "no checkpoint was saved"
        raise DivergedError(f"training diverged at iteration {record['iter']} "
                            f"({', '.join(f'{k} {v}' for k, v in bad.items())}); {kept}. "
                            "A lower --lr or a longer --warmup-iters usually helps")


def save(run, it):
    model, optimizer = run.ranks.for_checkpoint(run.model, run.optimizer)  # on every rank
    if run.ranks.is_main:
        save_checkpoint(run.out / FILE_NAME, model, optimizer, {"iter": it, **run.checkpoint_meta})


def open_metrics(run):
    """metrics.jsonl opened for appending. A resumed run keeps what led up to its checkpoint;
    the evaluation at the checkpoint is redone, so it is dropped with what came after."""
    run.out.mkdir(parents=True, exist_ok=True)
    path = run.out / "metrics.jsonl"
    history = [r for r in read_metrics(run.out) if r["iter"] < run.start
               or (r["kind"] == "train" and r["iter"] == run.start)] if run.start > 0 else []
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in history).encode())
    return path.open("a")


def write_record(metrics, record):
    if metrics is not None:  # None on the ranks that do not log
        metrics.write(json.dumps(record, allow_nan=False) + "\n")
        metrics.flush()


class StepClock:
    """Milliseconds per iteration between two log steps, evaluations left out."""

    def __init__(self, tokens_per_iter):
        self.tokens_per_iter, self.laps = tokens_per_iter, []

    def restart(self, it):
        self.t, self.it = time.perf_counter(), it

    def lap(self, it):
        ms = (time.perf_counter() - self.t) * 1000 / (it - self.it)
        self.restart(it)
        self.laps.append(ms)
        return {"ms_per_iter": ms, "tokens_per_s": self.tokens_per_iter / ms * 1000}

    def summary(self):
        median = statistics.median(self.laps) if self.laps else None
        return {"median_ms_per_iter": median,
                "tokens_per_s": self.tokens_per_iter / median * 1000 if median else None}


def finish(run, summary):
    """Write summary.json and the loss plot (rank 0 only)."""
    if run.ranks.is_main:
        atomic_write_bytes(run.out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
        plot_runs([run.out], run.out / "loss.png")
