"""The ops seam: the model calls these functions; the registry decides which backend runs.

    from mini_llm import ops
    y = ops.layer_norm(x, w, b)                  # PyTorch's F.layer_norm by default
    with ops.use_kernels("reference"):
        y = ops.layer_norm(x, w, b)              # the from-scratch reference

See registry.py for the selection strings (`--kernels`, MINI_LLM_KERNELS).

The kernel backends' contract. Each op's Triton (kernels/<op>.py) and CUDA
(mini_llm/ops/cuda/<op>.py) entry point has the signature of the function of that name below
and returns what it returns (tests/test_op_contracts.py checks both):

    op                returns                          autograd   torch.library ops, <b> = triton | cuda
    layer_norm        y                                yes        <b>_layer_norm_fwd, <b>_layer_norm_bwd
    rms_norm          y                                yes          (the same two, rms=True)
    add_layer_norm    (x + delta, norm(x + delta))     yes          (the same two, with delta)
    add_rms_norm      (x + delta, norm(x + delta))     yes          (the same two, with delta, rms=True)
    attention         o (B, nh, Tq, hs)                yes        <b>_attention_fwd, <b>_attention_bwd
    decode_attention  o (B, nh, Tq, hs)                no         <b>_decode_attention
    quant_matmul      (..., N)                         no         <b>_quant_matmul

- Both attention modules also have attention_forward(q, k, v, causal=True, scale=None) ->
  (o, lse) and attention_backward(q, k, v, o, lse, do, causal, scale=None) -> (dq, dk, dv); lse
  is float32 (B, nh, Tq), the natural-log logsumexp of the visible scale * q.k.
- The differentiable ops' schemas, what their forward saves and how their backward is called
  are one copy for both backends: kernel_autograd.py.
- The inference ops' schemas take the public arguments, then the backend's plan: Triton decode
  (num_splits, split_size) as planned, CUDA decode num_splits as asked (0: automatic); Triton
  quant split_k, CUDA quant path.
- Keyword-only arguments after the public ones are tuning knobs, for tests and benchmarks:
  num_splits (decode, both; None: automatic), split_k (Triton quant), path (CUDA quant).
- scale: 1 / sqrt(hs) when None, else any finite float. Outputs are contiguous, in the inputs'
  dtype (the fused norms: the promoted dtype of x and delta; gradients: each input's dtype).
- Inputs are checked before any launch (checks.py), errors naming the op as "<op> (<backend>)";
  the limits that differ by backend (norm width, decode head dims) are named there, once.
"""

import importlib

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

_OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "attention", "decode_attention",
        "quant_matmul", "gelu", "silu", "cross_entropy")
# Where each kernel backend's version of an op lives: Triton in kernels/<op>.py, CUDA's Python
# wrapper (over csrc/<op>.cu) in mini_llm/ops/cuda/<op>.py.
_KERNEL_MODULES = {
    "triton": {"layer_norm": "mini_llm.kernels.layer_norm", "rms_norm": "mini_llm.kernels.layer_norm",
               "add_layer_norm": "mini_llm.kernels.layer_norm", "add_rms_norm": "mini_llm.kernels.layer_norm",
               "attention": "mini_llm.kernels.attention", "decode_attention": "mini_llm.kernels.decode_attention",
               "quant_matmul": "mini_llm.kernels.quant_matmul"},
    "cuda": {"layer_norm": "mini_llm.ops.cuda.layer_norm", "rms_norm": "mini_llm.ops.cuda.layer_norm",
             "add_layer_norm": "mini_llm.ops.cuda.layer_norm", "add_rms_norm": "mini_llm.ops.cuda.layer_norm",
             "attention": "mini_llm.ops.cuda.attention", "decode_attention": "mini_llm.ops.cuda.decode_attention",
             "quant_matmul": "mini_llm.ops.cuda.quant_matmul"},
}


class _OnFirstCall:
    """A kernel imported when first called: importing triton takes a second, and the CUDA
    wrapper may build the extension; neither should happen unless the backend is used."""

    def __init__(self, module, name):
        self.module, self.name, self.fn = module, name, None

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            self.fn = getattr(importlib.import_module(self.module), self.name)
        return self.fn(*args, **kwargs)


for _op in _OPS:
    register(_op, "reference", getattr(reference, _op))
    register(_op, "torch", getattr(torch_ops, _op))
for _backend, _modules in _KERNEL_MODULES.items():
    for _op, _module in _modules.items():
        register(_op, _backend, _OnFirstCall(_module, _op))


def layer_norm(x, weight, bias=None, eps=1e-5):
    return _get("layer_norm")(x, weight, bias, eps)


def rms_norm(x, weight, eps=1e-5):
    return _get("rms_norm")(x, weight, eps)


def add_layer_norm(x, delta, weight, bias=None, eps=1e-5):
    """The residual add fused with the norm after it: returns (x + delta, layer_norm(x + delta))."""
    return _get("add_layer_norm")(x, delta, weight, bias, eps)


def add_rms_norm(x, delta, weight, eps=1e-5):
    return _get("add_rms_norm")(x, delta, weight, eps)


def attention(q, k, v, causal=True, scale=None):
    """q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs); causal masks keys after each query,
    the queries being the last Tq positions of the Tk keys."""
    return _get("attention")(q, k, v, causal, scale)


def decode_attention(q, k_cache, v_cache, cache_lens, scale=None, longest=None):
    """q: (B, nh, Tq, hs), the newest Tq positions of each sequence; k_cache, v_cache:
    (B, nkv, Tmax, hs); cache_lens: (B,) int32, the filled length of each sequence's cache;
    longest: their maximum if known on the host (spares the kernels a device sync)."""
    return _get("decode_attention")(q, k_cache, v_cache, cache_lens, scale, longest)


def quant_matmul(x, qweight, scales, group_size):
    """x (..., K) @ W.T with W stored quantized (the format: quant_format.py)."""
    return _get("quant_matmul")(x, qweight, scales, group_size)


def gelu(x):
    return _get("gelu")(x)


def silu(x):
    return _get("silu")(x)


def cross_entropy(logits, targets, ignore_index=-1):
    return _get("cross_entropy")(logits, targets, ignore_index)


__all__ = [
    "BACKENDS", "add_layer_norm", "add_rms_norm", "attention", "cross_entropy", "decode_attention", "describe", "gelu", "implementation", "implemented", "layer_norm",
    "op_names", "parse", "quant_matmul", "register", "rms_norm", "selection", "set_kernels", "silu", "unavailable_reason",
    "use_kernels",
]
