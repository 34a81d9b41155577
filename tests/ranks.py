"""What the parallel tests share: running a function on N gloo ranks, the tiny GPTs of both
block families, and the small training runs they compare with one process.

    results = run_ranks(fn, 2, arg)   # fn(arg) on ranks 0 and 1; [result of rank 0, of rank 1]

Each rank joins a process group on a free port, with one CPU thread (the ranks share the
machine's cores). A rank that raises fails the caller with its traceback; ranks still running
after `timeout` seconds (a hang) are killed and the caller fails, naming them.

Two kinds of run, both with dropout 0 (the loop seeds dropout per iteration, and a rank's
slice would draw other masks than one process draws):
  train(model, cfg, task, ranks)    the shared loop's optimizer steps on random_tokens, from a
                                    model made here (tensor and pipeline parallel wrap it)
  train_tiny(out, family, ...)      `mini-llm train`'s own path: train.new_run, the loop's fit,
                                    its checkpoint and resume, on a random-token dataset
"""

import os
import queue
import traceback
import types
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mini_llm.checkpoint import load_checkpoint
from mini_llm.loop import Run, SingleProcess, Task, fit, optimizer_step, seeded
from mini_llm.model import GPT, GPTConfig
from mini_llm.optim import AdamW
from mini_llm.parallel import comm, make_strategy
from mini_llm.parallel.groups import World, free_port
from mini_llm.tokenizer import CharTokenizer
from mini_llm.train import TrainConfig, language_modelling, new_run

FAMILIES = {  # tiny models of both block families; GPT-2's head tied to its embedding
    "gpt2": dict(norm="layernorm", mlp="gelu", pos="learned", bias=True, tie_weights=True),
    "llama": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_weights=False),
}


def tiny_config(family, **overrides):
    return GPTConfig(**{**dict(vocab_size=65, block_size=16, n_layer=2, n_head=4, n_embd=32,
                               dropout=0.0), **FAMILIES[family], **overrides})


def settings(grad_accum, batch_size=4, iters=3, **overrides):
    return TrainConfig(**{**dict(batch_size=batch_size, grad_accum=grad_accum, max_iters=iters, lr=1e-2,
                                 min_lr=1e-3, warmup_iters=1, grad_clip=1.0, seed=7), **overrides})


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


def resumed_equals_uninterrupted(make_ranks, config, cfg, task, steps):
    """A model-parallel strategy (make_ranks() -> its ranks) trained `steps` steps in one go,
    and 1 step, its gathered checkpoint (the one-process model and AdamW state, as every rank
    reads it from the file) loaded into a fresh run, then the rest: (model equal to the bit,
    AdamW state equal to the bit) on the ranks the strategy gathers to, None on the others."""
    def run(iterations, checkpoint=None):
        ranks, model = make_ranks(), fresh_model(config)
        if checkpoint:
            model.load_state_dict(checkpoint[0])
        model = ranks.wrap(model)
        optimizer = ranks.optimizer(model.param_groups(0.1), lambda g: AdamW(g, lr=cfg.lr, betas=(0.9, 0.99)))
        if checkpoint:
            optimizer.load_state_dict(checkpoint[1])
        loop = Run(cfg, model, optimizer, None, {}, ranks=ranks)
        for it in iterations:
            optimizer_step(loop, task, it)
        snapshots = ranks.for_checkpoint(model, optimizer)
        return None if snapshots[0] is None else [s.state_dict() for s in snapshots]

    whole = run(range(steps))
    first = [run(range(1))]
    dist.broadcast_object_list(first, src=0)  # what each rank reads from the checkpoint file
    resumed = run(range(1, steps), first[0])
    if whole is None:
        return None
    same_model = all(torch.equal(resumed[0][k], v) for k, v in whole[0].items())
    same_adam = all(torch.equal(resumed[1]["state"][i][k], v)
                    for i, state in whole[1]["state"].items() for k, v in state.items())
    return same_model, same_adam


STEPS = 3  # optimizer steps of a train_tiny run


def train_tiny(out, family, grad_accum, strategy=None, steps=STEPS, resume=False, split_batch=1):
    """Train to `steps` steps with global batch 4 (resume: from the checkpoint in `out`);
    returns (checkpoint, bytes sent in the last step, payload per kind)."""
    rng = np.random.default_rng(0)
    dataset = types.SimpleNamespace(train=rng.integers(0, 65, 4000).astype(np.uint16),
                                    val=rng.integers(0, 65, 400).astype(np.uint16))
    cfg = settings(grad_accum, iters=steps, lr=1e-3, min_lr=1e-4, seed=1337, out=str(out),
                   eval_interval=100, eval_iters=1, log_interval=1, sample_tokens=0, device="cpu",
                   dtype="float32", split_batch=split_batch)
    config = tiny_config(family)
    tokenizer = CharTokenizer([chr(32 + i) for i in range(65)])
    ckpt = load_checkpoint(Path(out) / "ckpt.safetensors") if resume else None
    run = new_run(cfg, config, tokenizer, "cpu", torch.autocast("cpu", enabled=False), ckpt, strategy)
    fit(run, language_modelling(dataset, cfg, config.block_size, "cpu"))
    if strategy is not None:
        dist.barrier()  # rank 0 has written the checkpoint
    return (load_checkpoint(Path(out) / "ckpt.safetensors"), comm.counter.last_step,
            comm.counter.last_payload)


def train_cases(out, cases):
    """On each rank: train_tiny for every (strategy name, family, grad_accum, options) of
    `cases`. Rank 0 saves {case: (model state, optimizer state, bytes, payload)}, and under
    "frozen" train_frozen's result with ddp, to out/results.pt (hundreds of tensors would
    each hold a file descriptor in run_ranks' result queue)."""
    results = {}
    for i, case in enumerate(cases):
        name, family, accum, options = case
        options = dict(options)
        folder = Path(out) / f"case{i}"  # rank 0 writes the checkpoint, every rank reads it
        if options.pop("resume", False):  # stop after step 1, then resume from the checkpoint
            train_tiny(folder, family, accum, make_strategy(name, world(), 4 * accum), steps=1)
        strategy = make_strategy(name, world(), 4 * accum, **options)
        resumed = (folder / "ckpt.safetensors").exists()
        ckpt, sent, payload = train_tiny(folder, family, accum, strategy, resume=resumed)
        results[case] = (ckpt.model_state, ckpt.optimizer_state, sent, payload)
    results["frozen"] = train_frozen(make_strategy("ddp", world(), 4))
    if dist.get_rank() == 0:
        torch.save(results, Path(out) / "results.pt")


def train_frozen(strategy=None):
    """STEPS plain optimizer steps of the tiny GPT with its position embedding frozen; returns
    (parameters, bytes sent in the last step)."""
    model = fresh_model(tiny_config("gpt2"))
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

