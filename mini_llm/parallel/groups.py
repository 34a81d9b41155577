"""The process groups, in one place: the world torchrun started, the backend chosen from the
device (gloo on CPU, NCCL on CUDA), a timeout so that a dead rank makes the others fail
instead of hang, and a 2-D mesh for strategies that combine two kinds of parallelism.

torchrun (torch.distributed.run) starts one process per rank and gives each its place in
environment variables: RANK (0..WORLD_SIZE-1 over all machines), LOCAL_RANK (on this machine),
WORLD_SIZE, MASTER_ADDR and MASTER_PORT (where rank 0's rendezvous store listens).
"""

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

# Seconds a collective may wait for its peers before it fails: a rank that died mid-step makes
# the others raise instead of waiting forever. MINI_LLM_DIST_TIMEOUT changes it (tests: short).
DEFAULT_TIMEOUT_S = 300


@dataclass
class World:
    rank: int  # this process, 0..size-1
    size: int  # processes in all
    local_rank: int  # this process on its machine: which GPU it drives
    device: str  # "cpu" or "cuda:<local_rank>"

    @property
    def backend(self):
        return "nccl" if self.device.startswith("cuda") else "gloo"


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device="auto"):
    """Join the process group torchrun set up; returns this rank's World."""
    if not launched_by_torchrun():
        raise ConfigError("--parallel needs the ranks started by torchrun: add --nproc-per-node N, "
                          "or run it under torchrun")
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    world = World(rank, size, local_rank, device)
    timeout = timedelta(seconds=float(os.environ.get("MINI_LLM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group(world.backend, rank=rank, world_size=size, timeout=timeout)
    except (RuntimeError, ValueError) as e:  # DistNetworkError, DistStoreError are RuntimeErrors
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot join the process group at {where} ({cause})") from None
    return world


def destroy():
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port():
    """A TCP port nobody listens on now (the OS picks it), for tests and the launcher."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
