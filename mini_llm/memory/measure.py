"""Measuring the peak of real training steps: max_memory_allocated on a GPU, the profiler's
allocation events on a CPU."""

import gc

import torch
from torch.autograd import DeviceType

from .. import ops
from ..model import GPT
from ..optim import AdamW, clip_grad_norm
from .predict import check_arguments

def cpu_peak_bytes(fn):
    """Run fn() under torch.profiler and return the most CPU bytes that were allocated at once.

    With profile_memory=True the profiler records a "[memory]" event per allocation (+bytes) and
    per free (-bytes) made while it runs. A running sum over them in time order is the live
    bytes; its maximum is the peak. Memory allocated before the profiler started is invisible
    (and so are its frees), so fn must build everything it uses: the model, the optimizer.
    """
    gc.collect()  # no stray frees of older tensors in the middle of the measurement
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def measure_training_memory(config, batch_size, device="cpu", *, dtype="float32", kernels="torch",
                            activation_checkpointing=False, grad_clip=1.0, steps=2, seed=0):
    """Build the model and the project's AdamW, run `steps` training steps on random tokens the
    way train.py does, and return the peak bytes allocated. Two steps: AdamW creates its state
    in the first step, so only the second holds the state through its backward.

    CUDA: torch.cuda.max_memory_allocated() above what was allocated before. CPU: the profiler's
    memory events (cpu_peak_bytes). dtype "bfloat16" runs the forward under autocast.
    """
    check_arguments(config, batch_size, dtype, device)
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def train():
        torch.manual_seed(seed)
        model = GPT(config).to(device).train()
        model.activation_checkpointing = activation_checkpointing
        optimizer = AdamW(model.param_groups(0.1), lr=1e-3, betas=(0.9, 0.99))
        for _step in range(steps):
            x, y = (torch.randint(0, config.vocab_size, (batch_size, config.block_size),
                                  device=device) for _pair in range(2))
            with autocast:
                loss = model(x, y)[1]  # the logits are freed here, as in train.py
            loss.backward()
            if grad_clip > 0:
                clip_grad_norm(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    with ops.use_kernels(kernels):
        if device.type != "cuda":
            return cpu_peak_bytes(train)
        gc.collect()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
