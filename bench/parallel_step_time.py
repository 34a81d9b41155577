"""Step time of the data-parallel strategies written here against torch's own, in one run:
ddp vs ddp-torch and fsdp vs fsdp-torch at 1, 2 and 4 ranks (gloo, CPU, one thread per rank,
as torchrun sets it), on the shakespeare-char-cpu model and its global batch of 12.

    python bench/parallel_step_time.py [--ranks 1 2 4] [--steps 10] [--out bench/results/parallel_step_time_cpu]

Each rank count is one group of spawned ranks that times every strategy in turn: 3 warm-up
steps, then the median of --steps optimizer steps (forward, backward, sync, clip, AdamW), each
ended by a barrier. On a machine with fewer cores than ranks the ranks share them: the step
time then measures the strategies' overheads more than any speed-up.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mini_llm.model import GPT, GPTConfig
from mini_llm.optim import AdamW
from mini_llm.parallel import groups, make_strategy
from mini_llm.parallel.launch import spawn
from mini_llm.presets import get_preset
from train_vs_nanogpt import machine

PRESET = get_preset("shakespeare-char-cpu")
PAIRS = [("ddp", "ddp-torch"), ("fsdp", "fsdp-torch")]


def wrapped(world, name, config, batch):
    """(model, strategy, the model as the strategy wraps it, its optimizer), seeded."""
    torch.manual_seed(0)
    model = GPT(config)
    strategy = make_strategy(name, world, batch)
    step_model = strategy.wrap(model)
    optimizer = strategy.optimizer(model.param_groups(0.1),
                                   lambda groups: AdamW(groups, lr=1e-3, betas=(0.9, 0.99)))
    return model, strategy, step_model, optimizer


def time_steps(world, name, config, batch, steps):
    model, strategy, step_model, optimizer = wrapped(world, name, config, batch)
    times = []
    for step in range(3 + steps):
        xy = [torch.randint(0, config.vocab_size, (batch, config.block_size),
                            generator=torch.Generator().manual_seed(step)) for _ in "xy"]
        x, y = strategy.local_batch(xy)
        t0 = time.perf_counter()
        with strategy.micro_batch(last=True):
            step_model(x, y)[1].backward()
        strategy.clip_grad_norm(model, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:]) * 1000


def rank_main(rank, size, out, steps):
    torch.set_num_threads(1)
    world = groups.init("cpu")
    config = GPTConfig(vocab_size=65, **PRESET["model"])
    ms = {name: time_steps(world, name, config, PRESET["train"]["batch_size"], steps)
          for pair in PAIRS for name in pair}
    if rank == 0:
        (Path(out) / f"ranks{size}.json").write_text(json.dumps(ms))
    groups.destroy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    folder = Path(f"/tmp/parallel_step_time_{time.time_ns()}")
    folder.mkdir()
    results = {}
    for size in args.ranks:
        spawn(rank_main, size, folder, args.steps, timeout_s=600)
        results[size] = json.loads((folder / f"ranks{size}.json").read_text())
    lines = [f"Step time (ms, median of {args.steps}), shakespeare-char-cpu model, global batch "
             f"{PRESET['train']['batch_size']} x {PRESET['model']['block_size']}, gloo on "
             f"{os.cpu_count()} CPU cores shared by all ranks, one thread per rank", "",
             "| ranks | " + " | ".join(f"{a} | {b} | {a} / {b}" for a, b in PAIRS) + " |",
             "|---|" + "---|---|---|" * len(PAIRS)]
    for size, ms in results.items():
        lines.append(f"| {size} | " + " | ".join(f"{ms[a]:.1f} | {ms[b]:.1f} | {ms[a] / ms[b]:.2f}"
                                                for a, b in PAIRS) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(
            {"machine": machine(), "preset": "shakespeare-char-cpu", "steps": args.steps,
             "ms_per_step": results}, indent=2) + "\n")
        Path(args.out + ".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
