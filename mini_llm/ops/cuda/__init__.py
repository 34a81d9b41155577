"""The CUDA backend: the extension module built from csrc/, and one Python wrapper per op
(mini_llm/ops/cuda/<op>.py) that gets it with

    from mini_llm.ops.cuda import load
    load().<launcher>(...)

load() imports the prebuilt mini_llm._C (setup.py builds it where torch has CUDA) if there is
one, else JIT-builds csrc/ (jit.py: nvcc per .cu file, cached, then the binding through
torch.utils.cpp_extension). Set MINI_LLM_CUDA_JIT=1 to build from csrc/ even when a prebuilt
module exists (e.g. while editing a kernel). `python -m mini_llm.ops.cuda` builds and prints
the ptxas table (registers, spills, shared memory per kernel).
"""

import importlib
import importlib.util
import os

from . import jit
from .jit import CudaBuildError, build

_module = None


def prebuilt():
    """True when load() will import the ahead-of-time build mini_llm._C."""
    return os.environ.get("MINI_LLM_CUDA_JIT") != "1" and importlib.util.find_spec("mini_llm._C") is not None


def unavailable_reason():
    """None if load() can import or build the extension here (it says nothing about a GPU), else
    why not. Cheap: builds nothing."""
    if prebuilt():
        return None
    try:
        jit.find_nvcc()
        jit.csrc_dir()
    except CudaBuildError as e:
        return str(e)
    return None


def load(verbose=False):
    """The extension module, imported or built once per process. Raises CudaBuildError (a
    KernelSelectionError) when it can be neither."""
    global _module
    if _module is None:
        _module = importlib.import_module("mini_llm._C") if prebuilt() else build(verbose=verbose)
    return _module


__all__ = ["CudaBuildError", "build", "load", "prebuilt", "unavailable_reason"]
