"""Will a training step fit? The predicted peak (predict.py) against the memory free now, checked
before the first step: a batch too large for the machine is then one clear error with both
figures, not an allocator crash (or the kernel's OOM killer) after the data and model are set up.

Free memory: on a GPU what the CUDA driver reports free; on a CPU the least of MemAvailable
(/proc/meminfo) and what the process's cgroup still allows (a container's memory limit, which
MemAvailable does not see).
"""

from pathlib import Path

import torch

from ..errors import ConfigError
from .predict import predict_training_memory
from .saved import MIB


def available_bytes(device):
    """Bytes a training run can still allocate on `device`; None where it cannot be told."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    figures = [meminfo_available(), cgroup_room()]
    figures = [f for f in figures if f is not None]
    return min(figures) if figures else None


def meminfo_available(path="/proc/meminfo"):
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_room(root="/sys/fs/cgroup"):
    """The cgroup's limit minus its usage (v2, then v1); None without a limit."""
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            text = (Path(root) / limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # v1 writes "no limit" as a huge number
                return None
            return int(text) - int((Path(root) / usage).read_text())
        except (OSError, ValueError):
            continue
    return None


def check_training_fits(config, batch_size, device, dtype, kernels, activation_checkpointing):
    """Raise ConfigError if one training step's predicted peak exceeds the memory free now.
    `kernels`: {op: backend} as ops.set_kernels returns it. A setup the predictor does not model
    (the reference backend for ops other than attention) is not checked."""
    spec = ",".join(f"{op}={backend}" for op, backend in kernels.items())
    try:
        peak = predict_training_memory(config, batch_size, dtype=dtype, kernels=spec,
                                       device="cuda" if device.startswith("cuda") else "cpu",
                                       activation_checkpointing=activation_checkpointing).peak
    except ConfigError:
        return
    free = available_bytes(device)
    if free is not None and peak > free:
        raise ConfigError(
            f"a training step needs about {peak / MIB:,.1f} MiB (predicted, batch {batch_size} x "
            f"{config.block_size}), but {device} has {free / MIB:,.1f} MiB free: lower --batch-size "
            "(--grad-accum keeps the tokens per step), or try --activation-checkpointing; "
            "`mini-llm memory` shows where it goes")
