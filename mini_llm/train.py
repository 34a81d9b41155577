"""Pretraining (stage 3): `mini-llm train`. Read top to bottom: the settings, then train(),
which sets up a new or resumed run and hands it to the shared loop (loop.py: optimizer
steps, evaluation, checkpoints, logging) with the language-modelling task defined here.

Every random draw is derived from (seed, iteration), not from a generator that runs on: the
batches and the dropout masks of step `it` are the same whether the run got there in one go
or through --resume, so a resumed run reproduces the uninterrupted run's losses.

Files in the run folder (--out):
  ckpt.safetensors  weights + optimizer + config (see checkpoint.py), saved at each evaluation
  metrics.jsonl     one JSON object per log step ("train") and per evaluation ("eval")
  summary.json      final losses, speed, device and settings
  loss.png          the loss curves
  .lock             locked while a run writes the folder: a second run into it is refused
"""

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, nvtx, ops
from .checkpoint import FILE_NAME, load_checkpoint
from .data import TINY_SHAKESPEARE, get_batch, prepare_dataset
from .errors import CheckpointError, ConfigError, DataError
from .files import check_output_folder, fetch, lock_folder
from .generate import default_prompt, generate
from .loop import Run, SingleProcess, Task, finish, fit, seeded
from .memory import check_training_fits
from .model import GPT, GPTConfig
from .optim import AdamW
from .parallel import STRATEGY_NAMES, groups, make_strategy
from .tokenizer import Tokenizer


# What --resume may change; everything else comes from the checkpoint.
RESUME_MAY_CHANGE = ("data", "max_iters", "device", "dtype", "compile", "kernels", "log_interval",
                     "sample_tokens", "nvtx", "activation_checkpointing", "parallel", "split_batch")


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
    parallel: str | None = None  # a strategy of mini_llm/parallel (ranks started by torchrun)
    split_batch: int = field(default=1, metadata={"help": (
        "one process: run each micro-batch as N forwards and backwards of --batch-size / N rows, "
        "gradients summed: the same batch in less activation memory, and with N = 2 the same "
        "arithmetic as `--parallel ddp` on 2 ranks, to the bit (docs/stage-4-parallel.md)")})

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval", "split_batch"):
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
        if self.parallel is not None and self.parallel not in STRATEGY_NAMES:
            raise ConfigError(f"parallel must be one of {', '.join(STRATEGY_NAMES)}, got {self.parallel!r}")
        if self.split_batch > 1 and self.parallel is not None:
            raise ConfigError("--split-batch is for one process; with --parallel the ranks split the batch")
        if self.batch_size % self.split_batch:
            raise ConfigError(f"--batch-size {self.batch_size} does not split into {self.split_batch} equal slices")


def train(model_overrides, cfg, resume=None):
    """Train a model; `model_overrides` are GPTConfig fields (vocab_size comes from the data).

    resume=None starts a new run in cfg.out. A dict continues the run there: the model, the
    weights, the optimizer state and every setting come from its checkpoint, except those the
    dict changes (where to stop, how to run: RESUME_MAY_CHANGE).
    """
    # Every check runs before the run folder is touched, so a bad command overwrites nothing.
    check_output_folder(cfg.out)
    ckpt, cfg = checkpoint_to_resume(model_overrides, cfg, resume)
    kernels = ops.set_kernels(cfg.kernels)
    config = GPTConfig(**model_overrides)  # checked before any data is read; vocab_size below
    if cfg.nvtx:
        nvtx.enable()
    bpe = Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else None
    dataset = prepare_dataset(fetch(TINY_SHAKESPEARE, cfg.data), bpe)
    config = model_config(config, ckpt, dataset, Path(cfg.out) / FILE_NAME)
    strategy = parallel_strategy(cfg)  # None: one process
    device, dtype, autocast = resolve_device(strategy.world.device if strategy else cfg.device, cfg.dtype)
    cfg = dataclasses.replace(cfg, dtype=dtype)
    per_rank = cfg.batch_size // (strategy.world.size if strategy else cfg.split_batch)  # rows per forward
    check_training_fits(config, per_rank, device, dtype, kernels, cfg.activation_checkpointing)

    run = new_run(cfg, config, dataset.tokenizer, device, autocast, ckpt, strategy)
    task = language_modelling(dataset, cfg, config.block_size, device)
    say = print if run.ranks.is_main else (lambda *_: None)
    say(f"model: {run.model.num_params() / 1e6:.2f}M parameters, {config.n_layer} layers, "
        f"{config.n_head} heads, {config.n_embd} wide, context {config.block_size}")
    say(f"device: {device} ({dtype}), kernels: {ops.describe(kernels)}, "
        f"{task.tokens_per_iter} tokens/iteration, iterations {run.start}..{cfg.max_iters}")
    if strategy:
        say(f"parallel: {cfg.parallel} on {strategy.world.size} ranks ({strategy.world.backend}), "
            f"global batch {cfg.batch_size} x {cfg.grad_accum} micro-batches, "
            f"{cfg.batch_size // strategy.world.size} sequences per rank and micro-batch")
    if ckpt is not None and cfg.lr_decay_iters < cfg.max_iters:  # resumed past the schedule's end
        say(f"note: the learning rate follows the checkpoint's schedule, which reaches min_lr "
            f"({cfg.min_lr:g}) at iteration {cfg.lr_decay_iters} and stays there to {cfg.max_iters}; "
            f"a new run gets a schedule as long as itself")
    # Rank 0 locks the run folder: a second run into it is refused, and a run that finished
    # there since the checks above (its checkpoint appeared) is not overwritten.
    with lock_folder(cfg.out) if run.ranks.is_main else nullcontext():
        if run.ranks.is_main and ckpt is None and (Path(cfg.out) / FILE_NAME).exists():
            raise ConfigError(f"{Path(cfg.out) / FILE_NAME} was written by another run since this "
                              "one started: pass --resume to continue it, or another --out")
        summary = fit(run, task)
    summary.update({
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else
        f"cpu ({torch.get_num_threads()} threads)", "dtype": dtype, "kernels": kernels,
        "float32_matmuls": "tf32" if device.startswith("cuda") else "ieee",
        "torch": torch.__version__, "params": run.model.num_params(),
        "model_config": config.to_dict(), "train_config": dataclasses.asdict(cfg),
        **({"ranks": strategy.world.size} if strategy else {}),
    })
    finish(run, summary)
    pipeline = (cfg.parallel or "").startswith("pp")  # each stage holds only its own layers
    sample = sample_text(run.model, dataset.tokenizer, cfg, device) if cfg.sample_tokens and not pipeline else None
    if strategy:  # every rank ran the sample: fsdp's forward needs them all
        groups.destroy()
    if run.ranks.is_main:
        print_done(summary, cfg, sample)
    return summary


def print_done(summary, cfg, sample):
    print(f"done: val loss {summary['val_loss']:.4f} after {cfg.max_iters} iterations, "
          f"{summary['wall_s']:.0f} s, median {summary['median_ms_per_iter'] or 0:.1f} ms/iteration; "
          f"wrote {cfg.out}/")
    if sample is not None:
        print("sample:\n" + sample)
    elif cfg.sample_tokens:
        print(f"no sample: a pipeline stage holds only its layers; `mini-llm sample {cfg.out}` reads "
              "the whole model from the checkpoint")


def parallel_strategy(cfg):
    """The strategy of a --parallel run on this rank (joins the process group), or None."""
    if cfg.parallel is None:
        return None
    world = groups.init(cfg.device)
    if cfg.batch_size % world.size:
        raise ConfigError(f"--batch-size {cfg.batch_size} (the global batch) "
                          f"does not divide by {world.size} ranks")
    return make_strategy(cfg.parallel, world, cfg.batch_size * cfg.grad_accum)


def checkpoint_to_resume(model_overrides, cfg, resume):
    """(checkpoint, settings) of a resumed run, (None, cfg) of a new one; refuses a new run
    into a folder that holds a checkpoint."""
    ckpt_path = Path(cfg.out) / FILE_NAME
    if resume is None:
        if ckpt_path.exists():
            raise ConfigError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
        return None, cfg
    if model_overrides:
        raise ConfigError(f"--resume keeps the checkpoint's model; drop {sorted(model_overrides)}")
    ckpt = load_checkpoint(ckpt_path)
    return ckpt, resumed_config(ckpt, cfg.out, resume)


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


def model_config(config, ckpt, dataset, ckpt_path):
    """The checkpoint's model, or `config` sized to the data's vocabulary."""
    if ckpt is None:
        config = dataclasses.replace(config, vocab_size=dataset.tokenizer.vocab_size)
    elif ckpt.tokenizer.to_dict() != dataset.tokenizer.to_dict():
        raise CheckpointError(f"{ckpt_path} was trained on another text or tokenizer "
                              "(its vocabulary differs)")
    else:
        config = ckpt.config
    if len(dataset.val) <= config.block_size:
        raise DataError(f"the validation split has {len(dataset.val)} tokens: too few for a "
                        f"context of {config.block_size}; use a longer text or a smaller --block-size")
    return config


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


def new_run(cfg, config, tokenizer, device, autocast, ckpt=None, strategy=None):
    """The model and optimizer, fresh (seeded by cfg.seed) or restored from `ckpt`; with a
    parallel `strategy`, the model as it wraps it and the optimizer it makes."""
    torch.manual_seed(cfg.seed)
    model = GPT(config).to(device)
    model.activation_checkpointing = cfg.activation_checkpointing
    if ckpt is not None:  # before a strategy shards the parameters
        restore(cfg, model.load_state_dict, ckpt.model_state)

    def make_adamw(param_groups):
        return AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    step_model = strategy.wrap(model) if strategy else None  # may replace the parameters
    groups = model.param_groups(cfg.weight_decay)
    optimizer = strategy.optimizer(groups, make_adamw) if strategy else make_adamw(groups)
    start = 0
    if ckpt is not None:
        restore(cfg, optimizer.load_state_dict, ckpt.optimizer_state)
        start = ckpt.meta["iter"]
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = {"model_config": config.to_dict(), "tokenizer": tokenizer.to_dict(),
            "train_config": dataclasses.asdict(cfg), "version": __version__}
    if cfg.compile:
        step_model = torch.compile(step_model or model)
    return Run(cfg, model, optimizer, Path(cfg.out), meta, start=start, autocast=autocast,
               step_model=step_model, ranks=strategy or SingleProcess(cfg.split_batch))


def restore(cfg, load_state_dict, state):
    try:
        load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{Path(cfg.out) / FILE_NAME} does not match its own config: {e}") from None


def language_modelling(dataset, cfg, block_size, device):
    """Next-token prediction on random windows of the text; evaluation: the mean loss over
    eval_iters fixed batches of each split (the same batches at every evaluation)."""
    splits = {"train": dataset.train, "val": dataset.val}

    def windows(split, *key):
        x, y = get_batch(splits[split], cfg.batch_size, block_size, seeded(cfg.seed, *key))
        return x.to(device), y.to(device)

    def batch(it, micro):
        return windows("train", "train", it, micro)

    def loss(model, xy):
        # Keep only the loss: holding the (B, T, V) logits through the next forward would
        # cost B*T*V*4 bytes (2.5 GB at 12 x 1024 with GPT-2's vocab).
        return model(*xy)[1], {}

    def evaluate(model):
        return {f"{split}_loss": sum(model(*windows(split, "eval", split, k))[1].item()
                                     for k in range(cfg.eval_iters)) / cfg.eval_iters
                for split in splits}

    return Task(batch, loss, evaluate, cfg.batch_size * cfg.grad_accum * block_size)


def sample_text(model, tokenizer, cfg, device):
    """A sample from the trained model, started from a newline (or the first token)."""
    prompt = torch.tensor([default_prompt(tokenizer)], device=device)
    ids = generate(model.eval(), prompt, cfg.sample_tokens, temperature=0.8, top_k=200,
                   generator=seeded(cfg.seed, "sample") if device == "cpu" else None)
    return tokenizer.decode(ids[0].tolist())
