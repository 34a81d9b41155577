"""Tiny training runs for the parallel tests: the same run in one process and on N ranks.

train_tiny goes through train.new_run, the loop's fit and its checkpoint, as `mini-llm train`
does, on random tokens and the tiny GPT of either block family. Dropout is 0: the loop seeds
dropout per iteration, and a rank's slice would draw other masks than one process draws.
"""

import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from mini_llm.checkpoint import load_checkpoint
from mini_llm.tokenizer import CharTokenizer
from mini_llm.loop import fit
from mini_llm.model import GPT, GPTConfig
from mini_llm.optim import AdamW
from mini_llm.parallel import comm, groups, make_strategy
from mini_llm.train import TrainConfig, language_modelling, new_run

FAMILIES = {"gpt2": dict(norm="layernorm", mlp="gelu", pos="learned", bias=True),
            "llama": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)}
STEPS = 3  # optimizer steps per run


def tiny_config(family):
    return GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                     **FAMILIES[family])


def train_tiny(out, family, grad_accum, strategy=None, batch_size=4, steps=STEPS, resume=False,
               split_batch=1, grad_clip=1.0):
    """Train to `steps` steps (resume: from the checkpoint in `out`); returns (checkpoint,
    bytes sent in the last step, payload per kind)."""
    rng = np.random.default_rng(0)
    dataset = types.SimpleNamespace(train=rng.integers(0, 65, 4000).astype(np.uint16),
                                    val=rng.integers(0, 65, 400).astype(np.uint16))
    cfg = TrainConfig(out=str(out), batch_size=batch_size, grad_accum=grad_accum, max_iters=steps,
                      warmup_iters=1, eval_interval=100, eval_iters=1, log_interval=1,
                      sample_tokens=0, device="cpu", dtype="float32",
                      split_batch=split_batch, grad_clip=grad_clip)
    config = tiny_config(family)
    tokenizer = CharTokenizer([chr(32 + i) for i in range(65)])
    ckpt = load_checkpoint(Path(out) / "ckpt.safetensors") if resume else None
    run = new_run(cfg, config, tokenizer, "cpu", torch.autocast("cpu", enabled=False), ckpt, strategy)
    fit(run, language_modelling(dataset, cfg, config.block_size, "cpu"))
    if strategy is not None:
        torch.distributed.barrier()  # rank 0 has written the checkpoint
    return (load_checkpoint(Path(out) / "ckpt.safetensors"), comm.counter.last_step,
            comm.counter.last_payload)


def run_all(rank, size, out, cases):
    """On each rank: every (strategy name, family, grad_accum, options) of `cases`; rank 0
    saves {case: (model state, optimizer state, bytes, payload)} to out/results.pt."""
    torch.set_num_threads(1)
    world = groups.init("cpu")
    results = {}
    for i, case in enumerate(cases):
        name, family, accum, options = case
        options = dict(options)
        if options.pop("resume", False):  # stop after step 1, then resume from the checkpoint
            train_tiny(Path(out) / str(i), family, accum, make_strategy(name, world, 4 * accum), steps=1)
        strategy = make_strategy(name, world, 4 * accum, **options)
        resumed = (Path(out) / str(i) / "ckpt.safetensors").exists()
        ckpt, sent, payload = train_tiny(Path(out) / str(i), family, accum, strategy, resume=resumed)
        results[case] = (ckpt.model_state, ckpt.optimizer_state, sent, payload)
    results["frozen"] = train_frozen(make_strategy("ddp", world, 4))
    if rank == 0:
        torch.save(results, Path(out) / "results.pt")
    groups.destroy()


def train_frozen(strategy=None):
    """STEPS plain optimizer steps of the tiny GPT with its position embedding frozen; returns
    (parameters, bytes sent in the last step)."""
    torch.manual_seed(0)
    model = GPT(tiny_config("gpt2"))
    model.wpe.weight.requires_grad_(False)
    step_model = strategy.wrap(model) if strategy else model
    optimizer = AdamW(model.param_groups(0.1), lr=1e-3)
    for step in range(STEPS):
        xy = [torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(step)) for _ in "xy"]
        x, y = strategy.local_batch(xy) if strategy else xy
        comm.counter.start_step()
        with strategy.micro_batch(last=True) if strategy else nullcontext():
            step_model(x, y)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        comm.counter.end_step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, comm.counter.last_step
