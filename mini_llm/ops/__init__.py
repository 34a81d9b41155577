"""The ops seam: the model calls these functions; the registry decides which backend runs.

    from mini_llm import ops
    y = ops.layer_norm(x, w, b)                  # PyTorch's F.layer_norm by default
    with ops.use_kernels("reference"):
        y = ops.layer_norm(x, w, b)              # the from-scratch reference

See registry.py for the selection strings (`--kernels`, MINI_LLM_KERNELS).
"""

from . import reference, torch_ops
from .registry import (
    BACKENDS,
    describe,
    implemented,
    implementation,
    op_names,
    register,
    selection,
    parse,
    set_kernels,
    unavailable_reason,
    use_kernels,
)
from .registry import get as _get

for _op in ("layer_norm", "rms_norm", "attention", "gelu", "silu", "cross_entropy"):
    register(_op, "reference", getattr(reference, _op))
    register(_op, "torch", getattr(torch_ops, _op))


def layer_norm(x, weight, bias=None, eps=1e-5):
    return _get("layer_norm")(x, weight, bias, eps)


def rms_norm(x, weight, eps=1e-5):
    return _get("rms_norm")(x, weight, eps)


def attention(q, k, v, causal=True, scale=None):
    """q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs); causal masks keys after each query,
    the queries being the last Tq positions of the Tk keys."""
    return _get("attention")(q, k, v, causal, scale)


def gelu(x):
    return _get("gelu")(x)


def silu(x):
    return _get("silu")(x)


def cross_entropy(logits, targets, ignore_index=-1):
    return _get("cross_entropy")(logits, targets, ignore_index)


__all__ = [
    "BACKENDS", "attention", "cross_entropy", "describe", "gelu", "implementation", "implemented", "layer_norm",
    "op_names", "parse", "register", "rms_norm", "selection", "set_kernels", "silu", "unavailable_reason",
    "use_kernels",
]
