"""The kernel registry: op name -> {backend name -> callable}, and which backend is in use.

A selection is a string, the same for `--kernels`, MINI_LLM_KERNELS and `use_kernels(...)`:

    "torch"                          every op on PyTorch's built-ins (the default)
    "reference"                      every op on the from-scratch reference
    "triton"                         every op that has a Triton kernel; the others stay torch
    "attention=cuda,layer_norm=triton"   per op; may follow a bare name ("triton,attention=cuda")
    "auto"                           per op, the fastest backend that runs here (cuda > triton > torch;
                                     Triton only on a GPU, not interpreted)

A backend that is unknown, not implemented for the op asked, or cannot run on this machine is
an error that says what exists; nothing falls back silently except under "auto".
"""

import contextlib
import importlib
import importlib.util
import os

import torch

from .. import nvtx
from ..errors import KernelSelectionError

BACKENDS = ("reference", "torch", "triton", "cuda")
DEFAULT_BACKEND = "torch"
ENV_VAR = "MINI_LLM_KERNELS"

_impls = {}  # op -> {backend -> callable}
_selected = None  # op -> backend; None until first use, then read from ENV_VAR


def register(op, backend, fn):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    _impls.setdefault(op, {})[backend] = fn


def op_names():
    return tuple(sorted(_impls))


def implemented(op):
    return tuple(b for b in BACKENDS if b in _impls[op])


def unavailable_reason(backend):
    """None if the backend can run on this machine, else why not."""
    if backend in ("reference", "torch"):
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            return "no CUDA GPU (TRITON_INTERPRET=1 runs Triton kernels on the CPU, slowly)"
        return None
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    # The seam knows a kernel backend by its module name only (as ops/__init__.py's table): the
    # backend is a layer above it, and importing it may build the extension from csrc/.
    return importlib.import_module("mini_llm.ops.cuda").unavailable_reason()


def _runnable(op, backend):
    return backend in _impls[op] and unavailable_reason(backend) is None


def _fast(backend):
    """False for Triton when it would run interpreted (correct, but slower than torch)."""
    return backend != "triton" or torch.cuda.is_available()


def _check_backend_name(name):
    if name not in BACKENDS:
        raise KernelSelectionError(
            f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} or auto"
        )
    reason = unavailable_reason(name)
    if reason:
        raise KernelSelectionError(f"backend {name!r} cannot run here: {reason}")


def parse(spec):
    """Turn a selection string into {op: backend} for every registered op."""
    choice = {op: DEFAULT_BACKEND for op in _impls}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        if item == "auto":
            for op in choice:
                choice[op] = next(b for b in ("cuda", "triton", "torch") if _runnable(op, b) and _fast(b))
        elif "=" in item:
            op, backend = (s.strip() for s in item.split("=", 1))
            if op not in _impls:
                raise KernelSelectionError(f"unknown op {op!r}; ops: {', '.join(op_names())}")
            _check_backend_name(backend)
            if backend not in _impls[op]:
                raise KernelSelectionError(
                    f"op {op!r} has no {backend!r} implementation; it has: "
                    f"{', '.join(implemented(op))}"
                )
            choice[op] = backend
        else:
            _check_backend_name(item)
            covered = [op for op in choice if item in _impls[op]]
            if not covered:
                raise KernelSelectionError(f"no op has a {item!r} implementation yet")
            choice.update(dict.fromkeys(covered, item))
    return choice


def selection():
    """The current {op: backend}; read from MINI_LLM_KERNELS on first use."""
    global _selected
    if _selected is None:
        try:
            _selected = parse(os.environ.get(ENV_VAR, ""))
        except KernelSelectionError as e:
            raise KernelSelectionError(f"{ENV_VAR}: {e}") from None
    return dict(_selected)


def set_kernels(spec=None):
    """Select backends for the rest of the process (None: read MINI_LLM_KERNELS); returns the
    resulting {op: backend}."""
    global _selected
    if spec is None:
        _selected = None
        return selection()
    _selected = parse(spec)
    return dict(_selected)


@contextlib.contextmanager
def use_kernels(spec):
    """Select backends inside a `with` block, restoring the previous selection after it."""
    global _selected
    previous = selection()
    set_kernels(spec)
    try:
        yield dict(_selected)
    finally:
        _selected = previous


def implementation(op, backend):
    """The callable of one backend, whatever is selected (the bench and tests compare them)."""
    return _impls[op][backend]


def get(op):
    """The selected backend's callable for `op` (inside an NVTX range "op[backend]" if on)."""
    if _selected is None:
        selection()  # reads MINI_LLM_KERNELS once
    backend = _selected[op]  # not selection(): that copies the dict, and this runs per op call
    fn = _impls[op][backend]
    return nvtx.traced(f"{op}[{backend}]", fn) if nvtx.enabled() else fn


def describe(choice=None):
    choice = selection() if choice is None else choice
    return " ".join(f"{op}={backend}" for op, backend in sorted(choice.items()))
