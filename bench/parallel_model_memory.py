"""Memory and bytes per rank of tensor and pipeline parallel: the planner's prediction
(mini_llm/parallel/plan.py) against what gloo ranks on this CPU hold and send.

    python bench/parallel_model_memory.py

Runs torchrun (torch.distributed.run) with 1, 2 and 4 ranks of this file. Each rank builds the
shakespeare-char-cpu model (4 layers, 4 heads, 128 wide, context 64; Tiny Shakespeare's 65
characters), splits it (tp or pp, 1F1B), and runs two optimizer steps of the shared loop on
micro-batches of 12 sequences, 2 per step, in float32. Measured per rank: the bytes sent in the
second step (comm.py's counters), the bytes of the parameters, gradients and AdamW state it
holds, and its peak: the parameters plus the profiler's peak of what the steps allocate
(memory.cpu_peak_bytes). Predicted: rank_plan() for the same layout and stage. Writes
bench/results/parallel_model_memory_cpu.{json,md}.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH, ACCUM, STEPS = 12, 2, 2


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def rank_main(strategy, out):
    """One rank, started by torchrun: measure, then rank 0 writes every rank's row to `out`."""
    import torch
    import torch.distributed as dist

    from mini_llm.loop import Run, SingleProcess, Task, optimizer_step, seeded
    from mini_llm.memory import cpu_peak_bytes
    from mini_llm.model import GPT, GPTConfig
    from mini_llm.optim import AdamW
    from mini_llm.parallel import comm, plan
    from mini_llm.parallel.groups import World
    from mini_llm.parallel.pp import Pipeline
    from mini_llm.parallel.tp import TensorParallel
    from mini_llm.presets import get_preset
    from mini_llm.train import TrainConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    world = World(rank, size, rank, "cpu")
    config = GPTConfig(vocab_size=65, **get_preset("shakespeare-char-cpu")["model"])
    cfg = TrainConfig(batch_size=BATCH, grad_accum=ACCUM, max_iters=STEPS, warmup_iters=1)

    def batch(it, micro):
        x = torch.randint(0, 65, (BATCH, config.block_size + 1), generator=seeded(cfg.seed, it, micro))
        return x[:, :-1], x[:, 1:]

    task = Task(batch, lambda model, xy: (model(*xy)[1], {}), lambda model: {}, 0)
    torch.manual_seed(cfg.seed)
    ranks = {"tp": TensorParallel, "pp": Pipeline}[strategy](world) if size > 1 else SingleProcess()
    model = ranks.wrap(GPT(config)) if size > 1 else GPT(config)
    run = Run(cfg, model, None, None, {}, ranks=ranks)

    def steps():  # the optimizer made inside the profiler: its state is allocated in step 1
        run.optimizer = AdamW(model.param_groups(0.1), lr=cfg.lr)
        for it in range(STEPS):
            comm.counter.start_step()
            optimizer_step(run, task, it)
            comm.counter.end_step()

    params = nbytes(model.parameters())
    peak = params + cpu_peak_bytes(steps)
    ranks.forward_backward(run, task, STEPS)  # the gradients a step holds, to count them
    held = {"grads": nbytes(p.grad for p in model.parameters()),
            "optimizer": nbytes(t for s in run.optimizer.state.values() for t in s.values())}
    layout = plan.Layout("ddp", 1, t=size if strategy == "tp" else 1, p=size if strategy == "pp" else 1)
    stage = rank if strategy == "pp" else 0
    work = plan.Run(BATCH, config.block_size, ACCUM, act_bytes=4)
    predicted = plan.rank_plan(plan.Shape.of(config), layout, work, stage)
    row = {"strategy": strategy if size > 1 else "one process", "ranks": size, "rank": rank,
           "measured": {"peak": peak, "params": params, **held, "sent": comm.counter.last_step},
           "predicted": {"peak": predicted.memory, "params": predicted.params, "grads": predicted.grads,
                         "optimizer": predicted.optimizer, "activations": predicted.activations,
                         "sent": round(predicted.sent)}}
    rows = [None] * size
    dist.all_gather_object(rows, row)
    if rank == 0:
        with open(out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    dist.destroy_process_group()


def main():
    from mini_llm.parallel.groups import free_port
    from train_vs_nanogpt import machine

    RESULTS.mkdir(exist_ok=True)
    raw = RESULTS / "parallel_model_memory_cpu.jsonl"
    raw.unlink(missing_ok=True)
    for strategy, size in (("tp", 1), ("tp", 2), ("tp", 4), ("pp", 2), ("pp", 4)):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(size),
                    "--master-port", str(free_port())]
        subprocess.run([*torchrun, "-m", "bench.parallel_model_memory", strategy, str(raw)], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    raw.unlink()
    mib, m = 2**20, machine()
    lines = ["# Memory and bytes per rank: tensor and pipeline parallel, predicted vs measured (CPU, gloo)", "",
             f"Made by `python bench/parallel_model_memory.py` on {m['cpu']} ({m['cores']} cores, shared by "
             f"the ranks), torch {m['torch']}, commit {m['git_commit']}, {m['date']}. "
             f"shakespeare-char-cpu model, float32, micro-batches of {BATCH} x 64 tokens, {ACCUM} per step "
             "(pp: 1F1B). States: parameters + gradients + AdamW (m, v, step), counted tensor by tensor; "
             "peak: the parameters + the profiler's peak of the two steps; predicted: "
             "mini_llm/parallel/plan.py (its activation formula is FlashAttention's, no allocator "
             "or temporaries).", "",
             "| strategy | ranks | rank | sent/step measured | predicted | states measured (MiB) | predicted "
             "| peak measured (MiB) | predicted | predicted / measured |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, p = r["measured"], r["predicted"]
        states_m, states_p = (x["params"] + x["grads"] + x["optimizer"] for x in (m, p))
        lines.append(f"| {r['strategy']} | {r['ranks']} | {r['rank']} | {m['sent']:,} | {p['sent']:,} | "
                     f"{states_m / mib:.3f} | {states_p / mib:.3f} | {m['peak'] / mib:.2f} | "
                     f"{p['peak'] / mib:.2f} | {p['peak'] / m['peak']:.2f} |")
    (RESULTS / "parallel_model_memory_cpu.json").write_text(json.dumps({"machine": m, "rows": rows}, indent=1) + "\n")
    (RESULTS / "parallel_model_memory_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        rank_main(*sys.argv[1:])
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        main()
