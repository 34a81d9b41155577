"""NVTX ranges: named spans that Nsight Systems draws on its timeline and Nsight Compute can
filter kernels by. Off unless enabled (`--nvtx` on train, sample and bench), so they cost
nothing otherwise. Names used: "step N", "forward", "backward", "optimizer", "layer N",
"op[backend]" for every call through the ops seam, "prefill", "decode", "bench ...".
"""

import contextlib

import torch

from .errors import ConfigError

_enabled = False


def enable():
    global _enabled
    if not torch.cuda.is_available():
        raise ConfigError("--nvtx needs a CUDA GPU (NVTX ranges are for Nsight's GPU timeline)")
    _enabled = True


def enabled():
    return _enabled


@contextlib.contextmanager
def range(name):  # noqa: A001 (read as nvtx.range, like torch.cuda.nvtx.range)
    if not _enabled:
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


def traced(name, fn):
    """fn wrapped in a range called `name`."""
    def call(*args, **kwargs):
        with range(name):
            return fn(*args, **kwargs)
    return call
