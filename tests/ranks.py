"""Run a function on N gloo ranks, in fresh processes, for the parallel tests; and the small
language-modelling run they compare with one process.

    results = run_ranks(fn, 2, arg)   # fn(arg) on ranks 0 and 1; [result of rank 0, of rank 1]

Each rank joins a process group on a free port, with one CPU thread (the ranks share the
machine's cores). A rank that raises fails the caller with its traceback; ranks still running
after `timeout` seconds (a hang) are killed and the caller fails, naming them.
"""

import os
import queue
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mini_llm.loop import Run, SingleProcess, Task, optimizer_step, seeded
from mini_llm.model import GPT, GPTConfig
from mini_llm.optim import AdamW
from mini_llm.parallel.groups import World, free_port
from mini_llm.train import TrainConfig

FAMILIES = {  # tiny models of both block families; GPT-2's head tied to its embedding
    "gpt2": dict(norm="layernorm", mlp="gelu", pos="learned", bias=True, tie_weights=True),
    "llama": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_weights=False),
}


def tiny_config(family, **overrides):
    return GPTConfig(**{**dict(vocab_size=65, block_size=16, n_layer=2, n_head=4, n_embd=32,
                               dropout=0.0), **FAMILIES[family], **overrides})


def settings(grad_accum, batch_size=4, iters=3):
    return TrainConfig(batch_size=batch_size, grad_accum=grad_accum, max_iters=iters, lr=1e-2,
                       min_lr=1e-3, warmup_iters=1, grad_clip=1.0, seed=7)


def random_tokens(config, cfg):
    """A Task on random tokens: the same batch for the same (it, micro) on every rank."""
    def batch(it, micro):
        g = seeded(cfg.seed, "train", it, micro)
        x = torch.randint(0, config.vocab_size, (cfg.batch_size, config.block_size + 1), generator=g)
        return x[:, :-1], x[:, 1:]

    return Task(batch, lambda model, xy: (model(*xy)[1], {}), lambda model: {},
                cfg.batch_size * cfg.grad_accum * config.block_size)


def world():
    """This rank's groups.World (CPU, gloo)."""
    rank, size = dist.get_rank(), dist.get_world_size()
    return World(rank, size, rank, "cpu")


def fresh_model(config, seed=0):
    torch.manual_seed(seed)
    return GPT(config)


def train(model, cfg, task, ranks=None):
    """cfg.max_iters optimizer steps of the shared loop; returns the losses and the optimizer."""
    run = Run(cfg, model, AdamW(model.param_groups(0.1), lr=cfg.lr, betas=(0.9, 0.99)), None, {},
              ranks=ranks or SingleProcess())
    return [float(optimizer_step(run, task, it)[0]) for it in range(cfg.max_iters)], run.optimizer


def checkpoint_diff(model_state, optimizer_state, reference, reference_optimizer):
    """How far a checkpoint gathered from the ranks is from one process's: the largest
    difference of a model tensor, and of an AdamW state tensor relative to its largest entry.
    Their names, shapes and settings must be equal."""
    ref_model, ref_opt = reference.state_dict(), reference_optimizer.state_dict()
    assert list(model_state) == list(ref_model)
    assert optimizer_state["param_groups"] == ref_opt["param_groups"]
    assert optimizer_state["state"].keys() == ref_opt["state"].keys()
    model = max(float((model_state[k] - v).abs().max()) for k, v in ref_model.items())
    adam = max(float((optimizer_state["state"][i][k] - v).abs().max() / v.abs().max().clamp_min(1e-30))
               for i, state in ref_opt["state"].items() for k, v in state.items())
    return model, adam


def _rank_main(fn, rank, world, port, args, results):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        results.put((rank, True, fn(*args)))
    except BaseException:  # noqa: BLE001 - sent to the parent, which fails the test
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world, *args, timeout=90):
    ctx = mp.get_context("spawn")
    results, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, args, results), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    out = {}
    try:
        while len(out) < world:
            rank, ok, value = results.get(timeout=timeout)
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
            out[rank] = value
    except queue.Empty:
        missing = sorted(set(range(world)) - set(out))
        raise AssertionError(f"ranks {missing} gave no result within {timeout} s (a hang?)") from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]

