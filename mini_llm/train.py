"""Training: AdamW, warm-up + cosine schedule, gradient clipping and accumulation, periodic
evaluation, checkpoints that resume exactly, and a metrics log scripts can read.

Every random draw is derived from (seed, iteration), not from a generator that runs on: the
batches and the dropout masks of step `it` are the same whether the run got there in one go
or through --resume, so a resumed run reproduces the uninterrupted run's losses.

Files in the run folder (--out):
  ckpt.safetensors  weights + optimizer + config (see checkpoint.py), saved at each evaluation
  metrics.jsonl     one JSON object per log step ("train") and per evaluation ("eval")
  summary.json      final losses, speed, device and settings
  loss.png          the loss curves
"""

import dataclasses
import hashlib
import json
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__, nvtx, ops
from .checkpoint import FILE_NAME, load_checkpoint, save_checkpoint
from .data import TINY_SHAKESPEARE, get_batch, prepare_dataset
from .errors import CheckpointError, ConfigError, DataError
from .files import atomic_write_bytes, fetch
from .generate import generate
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, lr_at
from .plot import plot_runs, read_metrics
from .tokenizer import Tokenizer


# What --resume may change; everything else comes from the checkpoint.
RESUME_MAY_CHANGE = ("data", "max_iters", "device", "dtype", "compile", "kernels", "log_interval",
                     "sample_tokens", "nvtx", "activation_checkpointing")


@dataclass
class TrainConfig:
    out: str = "out"
    data: str | None = None  # a text file; default: Tiny Shakespeare
    tokenizer: str | None = None  # a BPE tokenizer folder, or "gpt2"; default: characters
    batch_size: int = 12
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # default: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # float32 or bfloat16 (autocast); auto: bf16 on a CUDA GPU that has it
    compile: bool = False
    kernels: str | None = None  # None: MINI_LLM_KERNELS, else torch
    sample_tokens: int = 300  # printed at the end; 0 skips
    nvtx: bool = False  # NVTX ranges per step, forward/backward/optimizer, layer and op
    activation_checkpointing: bool = False  # blocks recompute their activations in backward

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "sample_tokens"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0:
            raise ConfigError("max_iters and warmup_iters must be >= 0")
        check_device_name(self.device)
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters


def seed_of(*key):
    """A seed that is a hash of `key`: distinct keys, e.g. (1337, "dropout", 5) and
    (1338, "dropout", 4), never share a random stream."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") >> 1


def seeded(*key):
    """A generator seeded by seed_of(*key), e.g. seeded(seed, "train", it, micro)."""
    return torch.Generator().manual_seed(seed_of(*key))


def check_device_name(name):
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name, dtype):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device_name(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is visible")
    if dtype == "auto":
        bf16 = name.startswith("cuda") and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16 else "float32"
    autocast = (
        torch.autocast(torch.device(name).type, dtype=torch.bfloat16)
        if dtype == "bfloat16" else nullcontext()
    )
    return name, dtype, autocast


@torch.no_grad()
def estimate_loss(model, splits, cfg, block_size, device, autocast):
    """Mean loss over eval_iters fixed batches per split (the same batches at every eval)."""
    model.eval()
    losses = {}
    for name, ids in splits.items():
        total = 0.0
        for k in range(cfg.eval_iters):
            x, y = get_batch(ids, cfg.batch_size, block_size, seeded(cfg.seed, "eval", name, k))
            with autocast:
                loss = model(x.to(device), y.to(device))[1]  # the logits are freed at once
            total += loss.item()
        losses[name] = total / cfg.eval_iters
    model.train()
    return losses


def resumed_config(ckpt, out, changes):
    """The checkpoint's own settings, with `changes` (keys of RESUME_MAY_CHANGE) applied."""
    not_allowed = sorted(set(changes) - set(RESUME_MAY_CHANGE))
    if not_allowed:
        raise ConfigError(f"--resume continues with the checkpoint's settings; only "
                          f"{', '.join(RESUME_MAY_CHANGE)} may change, not {', '.join(not_allowed)}")
    if ckpt.optimizer_state is None:
        raise CheckpointError(f"{out} holds no optimizer state; it cannot be resumed")
    try:
        cfg = TrainConfig(**{**ckpt.meta["train_config"], **changes, "out": str(out)})
    except TypeError as e:
        raise CheckpointError(f"{out}: settings this version does not know ({e})") from None
    if cfg.max_iters <= ckpt.meta["iter"]:
        raise ConfigError(f"{out} is at iteration {ckpt.meta['iter']}: pass a larger --max-iters "
                          f"(got {cfg.max_iters})")
    return cfg


def train(model_overrides, cfg, resume=None):
    """Train a model; `model_overrides` are GPTConfig fields (vocab_size comes from the data).

    resume=None starts a new run in cfg.out. A dict continues the run there: the model, the
    weights, the optimizer state and every setting come from its checkpoint, except those the
    dict changes (where to stop, how to run: RESUME_MAY_CHANGE).
    """
    out = Path(cfg.out)
    ckpt_path = out / FILE_NAME
    # Every check runs before the run folder is touched, so a bad command overwrites nothing.
    ckpt = None
    if resume is not None:
        if model_overrides:
            raise ConfigError(f"--resume keeps the checkpoint's model; drop {sorted(model_overrides)}")
        ckpt = load_checkpoint(ckpt_path)
        cfg = resumed_config(ckpt, out, resume)
    elif ckpt_path.exists():
        raise ConfigError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
    kernels = ops.set_kernels(cfg.kernels)
    if cfg.nvtx:
        nvtx.enable()
    config = GPTConfig(**model_overrides)  # vocab_size is set from the data below
    bpe = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
    dataset = prepare_dataset(fetch(TINY_SHAKESPEARE, cfg.data), bpe)
    tokenizer = dataset.tokenizer
    if ckpt is not None:
        if ckpt.tokenizer.to_dict() != tokenizer.to_dict():
            raise CheckpointError(f"{ckpt_path} was trained on another text or tokenizer "
                                  "(its vocabulary differs)")
        config = ckpt.config
    else:
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    if len(dataset.val) <= config.block_size:
        raise DataError(f"the validation split has {len(dataset.val)} tokens: too few for a "
                        f"context of {config.block_size}; use a longer text or a smaller --block-size")
    device, dtype, autocast = resolve_device(cfg.device, cfg.dtype)
    cfg = dataclasses.replace(cfg, dtype=dtype)

    torch.manual_seed(cfg.seed)
    model = GPT(config).to(device)
    model.activation_checkpointing = cfg.activation_checkpointing
    optimizer = AdamW(model.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    start = 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_path} does not match its own config: {e}") from None
        start = ckpt.meta["iter"]
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    step_model = torch.compile(model) if cfg.compile else model

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    # Keep what led up to the checkpoint; its own evaluation at `start` is redone below.
    history = [r for r in read_metrics(out) if r["iter"] < start
               or (r["kind"] == "train" and r["iter"] == start)] if ckpt else []
    atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in history).encode())

    def log(record):
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def checkpoint(it):
        meta = {"iter": it, "model_config": config.to_dict(), "tokenizer": tokenizer.to_dict(),
                "train_config": dataclasses.asdict(cfg), "version": __version__}
        save_checkpoint(ckpt_path, model, optimizer, meta)

    splits = {"train": dataset.train, "val": dataset.val}
    tokens_per_iter = cfg.batch_size * cfg.grad_accum * config.block_size
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {config.n_layer} layers, "
          f"{config.n_head} heads, {config.n_embd} wide, context {config.block_size}")
    print(f"device: {device} ({dtype}), kernels: {ops.describe(kernels)}, "
          f"{tokens_per_iter} tokens/iteration, iterations {start}..{cfg.max_iters}")
    step_ms, losses = [], {}
    t_start = time.perf_counter()
    it = start
    metrics = metrics_path.open("a")
    bar = tqdm(total=cfg.max_iters, initial=start, unit="it", dynamic_ncols=True, disable=None)
    with metrics, bar:
        while True:
            if it % cfg.eval_interval == 0 or it in (start, cfg.max_iters):
                losses = estimate_loss(model, splits, cfg, config.block_size, device, autocast)
                log({"kind": "eval", "iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
                tqdm.write(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if it > start:  # the last one included: the run ends on a checkpoint
                    checkpoint(it)
                t_log, it_log = time.perf_counter(), it  # evaluation time stays out of ms/iteration
            if it >= cfg.max_iters:
                break
            lr = lr_at(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(seed_of(cfg.seed, "dropout", it))  # the same masks after a resume
            with nvtx.range(f"step {it}"):
                step_loss = 0.0
                for micro in range(cfg.grad_accum):
                    x, y = get_batch(splits["train"], cfg.batch_size, config.block_size,
                                     seeded(cfg.seed, "train", it, micro))
                    with nvtx.range("forward"), autocast:
                        # Keep only the loss: holding the (B, T, V) logits through the next
                        # forward would cost B*T*V*4 bytes (2.5 GB at 12 x 1024 with GPT-2's vocab).
                        loss = step_model(x.to(device), y.to(device))[1]
                    with nvtx.range("backward"):
                        (loss / cfg.grad_accum).backward()
                    step_loss += loss.detach() / cfg.grad_accum
                with nvtx.range("optimizer"):
                    if cfg.grad_clip > 0:
                        clip_grad_norm(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            it += 1
            bar.update(1)
            if it % cfg.log_interval == 0 or it == cfg.max_iters:
                loss_value = float(step_loss)  # waits for the device: the clock below is honest
                ms = (time.perf_counter() - t_log) * 1000 / (it - it_log)
                t_log, it_log = time.perf_counter(), it
                step_ms.append(ms)
                tok_s = tokens_per_iter / ms * 1000
                log({"kind": "train", "iter": it, "loss": loss_value, "lr": lr, "ms_per_iter": ms,
                     "tokens_per_s": tok_s})
                bar.set_postfix(loss=f"{loss_value:.4f}", ms=f"{ms:.1f}", tok_s=f"{tok_s:,.0f}")
    wall = time.perf_counter() - t_start

    median_ms = statistics.median(step_ms) if step_ms else None
    summary = {
        "iters": cfg.max_iters, "train_loss": losses["train"], "val_loss": losses["val"],
        "median_ms_per_iter": median_ms,
        "tokens_per_s": tokens_per_iter / median_ms * 1000 if median_ms else None,
        "wall_s": wall, "device": torch.cuda.get_device_name() if device.startswith("cuda") else
        f"cpu ({torch.get_num_threads()} threads)", "dtype": dtype, "kernels": kernels,
        "float32_matmuls": "tf32" if device.startswith("cuda") else "ieee",
        "torch": torch.__version__, "params": model.num_params(),
        "model_config": config.to_dict(), "train_config": dataclasses.asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_runs([out], out / "loss.png")
    print(f"done: val loss {losses['val']:.4f} after {cfg.max_iters} iterations, "
          f"{wall:.0f} s, median {median_ms or 0:.1f} ms/iteration; wrote {out}/")
    if cfg.sample_tokens:
        try:
            start_ids = tokenizer.encode("\n")
        except DataError:  # a text without newlines: start from its first token
            start_ids = [0]
        prompt = torch.tensor([start_ids], device=device)
        ids = generate(model.eval(), prompt, cfg.sample_tokens, temperature=0.8, top_k=200,
                       generator=seeded(cfg.seed, "sample") if device == "cpu" else None)
        print("sample:\n" + tokenizer.decode(ids[0].tolist()))
    return summary
