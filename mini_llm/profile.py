"""`mini-llm profile`: a few training steps of a preset under torch.profiler.

Writes into --out:
  trace.json               the timeline (open in ui.perfetto.dev or chrome://tracing)
  top_ops.txt              the ops that took the most time, as PyTorch's profiler tables them
  memory_snapshot.pickle   CUDA only: every allocation with its stack (drag into
                           pytorch.org/memory_viz)
For Nsight Systems / Compute instead, see docs/stage-4-profiling-memory.md.
"""

import contextlib
from pathlib import Path

import torch

from . import ops
from .model import GPT, GPTConfig
from .optim import AdamW
from .presets import get_preset


def synthetic_training(preset_name, device, vocab_size=65, seed=0):
    """A preset's model, its optimizer and one random batch: what timing and profiling need,
    without the data pipeline. Returns (model, train_step, tokens per step)."""
    preset = get_preset(preset_name)
    config = GPTConfig(vocab_size=vocab_size, **preset["model"])
    return synthetic_training_of(config, preset["train"]["batch_size"], device, seed)


def synthetic_training_of(config, batch, device, seed=0):
    """synthetic_training for any model config and batch size."""
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, config.vocab_size, (batch, config.block_size), generator=g).to(device)
            for _ in range(2))
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    optimizer = AdamW(model.param_groups(0.1), lr=1e-3, betas=(0.9, 0.99))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    def train_step():
        with autocast:
            loss = model(x, y)[1]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, train_step, batch * config.block_size


def profile(preset_name, kernels, out, steps=5, warmup=2):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    written = ["trace.json", "top_ops.txt"]
    try:
        with ops.use_kernels(kernels):
            _, train_step, _ = synthetic_training(preset_name, device)
            schedule = torch.profiler.schedule(wait=0, warmup=warmup, active=steps, repeat=1)
            with torch.profiler.profile(activities=activities, schedule=schedule,
                                        record_shapes=True, profile_memory=True) as prof:
                for _ in range(warmup + steps):
                    train_step()
                    prof.step()  # marks the steps in the trace as ProfilerStep#N
        if cuda:
            torch.cuda.memory._dump_snapshot(str(out / "memory_snapshot.pickle"))
            written.append("memory_snapshot.pickle")
    finally:
        if cuda:  # recording slows every allocation: never leave it on
            torch.cuda.memory._record_memory_history(enabled=None)
    prof.export_chrome_trace(str(out / "trace.json"))
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=25)
    (out / "top_ops.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {', '.join(str(out / name) for name in written)}")
