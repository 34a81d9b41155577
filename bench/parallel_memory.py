"""Memory per rank of each data-parallel strategy: predicted (mini_llm.memory.parallel) against
measured (the peak of live CPU bytes under torch.profiler on each rank, two training steps
with the model, the wrap and the optimizer built inside the measurement).

    python bench/parallel_memory.py [--ranks 2 4] [--out bench/results/parallel_memory_cpu]

The model is chosen so that parameters and optimizer state outweigh the activations (4 layers,
256 wide, context 32, a global batch of 8): that is where sharding them shows. Ranks run on
gloo on this machine's CPU cores, one thread each.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from mini_llm.memory import MIB, cpu_peak_bytes
from mini_llm.memory.parallel import predict_parallel_memory
from mini_llm.model import GPT, GPTConfig
from mini_llm.parallel import DATA_PARALLEL, groups
from mini_llm.parallel.launch import spawn
from parallel_step_time import wrapped
from train_vs_nanogpt import machine

CONFIG = dict(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_embd=256, dropout=0.0)
GLOBAL_BATCH = 8


def two_steps(world, name, config):
    """What is measured: build, wrap, two optimizer steps as the loop runs them."""
    model, strategy, step_model, optimizer = wrapped(world, name, config, GLOBAL_BATCH)
    for _ in range(2):
        xy = [torch.randint(0, config.vocab_size, (GLOBAL_BATCH, config.block_size)) for _ in "xy"]
        x, y = strategy.local_batch(xy)
        with strategy.step():
            with strategy.micro_batch(last=True):
                step_model(x, y)[1].backward()
            strategy.clip_grad_norm(model, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def measure_ranks(rank, size, out):
    torch.set_num_threads(1)
    world = groups.init("cpu")
    config = GPTConfig(**CONFIG)
    peaks = {name: cpu_peak_bytes(lambda: two_steps(world, name, config)) for name in DATA_PARALLEL}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(peaks))
    groups.destroy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    config = GPTConfig(**CONFIG)
    rows = []
    for size in args.ranks:
        folder = Path(f"/tmp/parallel_memory_{time.time_ns()}")
        folder.mkdir()
        spawn(measure_ranks, size, folder, timeout_s=600)
        measured = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(size)]
        for name in DATA_PARALLEL:
            pred = predict_parallel_memory(config, GLOBAL_BATCH, name, size)
            rows.append({"strategy": name, "ranks": size, "predicted": vars(pred),
                         "measured_per_rank": [m[name] for m in measured]})
    lines = [f"Memory per rank, {config.n_layer} layers x {config.n_embd} wide, context "
             f"{config.block_size}, global batch {GLOBAL_BATCH} ({sum(p.numel() for p in GPT(config).parameters()) / 1e6:.2f}M "
             f"parameters), float32, gloo on {machine()['cpu']} ({machine()['cores']} cores shared by all "
             "ranks); MiB. The measured peak can differ between ranks: it depends on when an "
             "asynchronous collective's buffers are freed relative to the backward.", "",
             "| strategy | ranks | params | grads | optimizer | activations | predicted peak (phase) "
             "| measured peak per rank | predicted / measured |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, m = r["predicted"], r["measured_per_rank"]
        lines.append(f"| {r['strategy']} | {r['ranks']} | {p['parameters'] / MIB:.2f} | {p['gradients'] / MIB:.2f} "
                     f"| {p['optimizer_state'] / MIB:.2f} | {p['activations'] / MIB:.2f} | {p['peak'] / MIB:.2f} "
                     f"({p['peak_phase']}) | {', '.join(f'{x / MIB:.2f}' for x in m)} | {p['peak'] / max(m):.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps({"machine": machine(), "config": CONFIG,
                                                         "global_batch": GLOBAL_BATCH, "backend": "gloo",
                                                         "rows": rows}, indent=2) + "\n")
        Path(args.out + ".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
