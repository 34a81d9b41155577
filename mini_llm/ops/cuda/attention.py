"""CUDA FlashAttention-2: softmax(scale * q k^T + causal mask) v without the (Tq, Tk) score matrix.

The kernels are CUDA C++ in csrc/: the forward on tensor cores in attention_fwd.cu (mma.sync
m16n8k16 with float32 accumulation, cp.async double buffering, online softmax; its header
comment walks through the tiling), the backward in attention_bwd.cu (also tensor cores: a dq
kernel and a dk/dv kernel, no atomics), and a simple exact-float32 path for float32 inputs in
attention_fp32.cu. This file checks the inputs and registers both directions with torch.library
(ops mini_llm::cuda_attention_fwd / mini_llm::cuda_attention_bwd), so the op runs under autograd
and torch.compile. Public: attention, attention_forward -> (o, lse), attention_backward ->
(dq, dk, dv), with the Triton backend's signatures, op schemas and autograd wiring
(mini_llm/ops/kernel_autograd.py): the forward saves lse (float32 (B, nh, Tq), natural-log
logsumexp of the visible scale * q.k).

Inputs may be strided views (e.g. the model's .transpose(1, 2) of (B, T, nh, hs)) as long as the
head dim has stride 1; a view whose other strides or start the kernels cannot copy in 16-byte
pieces is copied first. Outputs and gradients come back contiguous.

    pytest -q tests/test_cuda_attention.py        # reference checks run with -m gpu on a GPU
"""

import torch

from ..checks import check_attention, check_attention_backward, kernel_device, softmax_scale
from ..kernel_autograd import attention_bwd_outputs, attention_fwd_outputs, register_attention_autograd
from . import load

OP = "attention (cuda)"  # how input errors name the op
BWD_OP = "attention backward (cuda)"


def _stream(t):
    return torch.cuda.current_stream(t.device).cuda_stream


def _kernel_ready(t):
    """t itself when the kernels can read it in place (unit stride in the head dim, the other
    strides and the start whole 16-byte multiples), else a contiguous copy. The start is checked
    as an offset into the storage (PyTorch aligns storages far beyond 16 bytes), which, unlike
    data_ptr(), torch.compile can trace."""
    granule = 16 // t.element_size()
    strides_ok = all(n <= 1 or s % granule == 0 for n, s in zip(t.shape[:-1], t.stride()[:-1]))
    if t.stride(-1) == 1 and strides_ok and t.storage_offset() % granule == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


@torch.library.custom_op("mini_llm::cuda_attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = attention_fwd_outputs(q)
    load().attention_forward(q, k, v, o, lse, causal, scale, _stream(q))
    return o, lse


@_attention_fwd.register_fake
def _(q, k, v, causal, scale):
    return attention_fwd_outputs(q)


@torch.library.custom_op("mini_llm::cuda_attention_bwd", mutates_args=())
def _attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                   do: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = attention_bwd_outputs(q, k)
    do = _kernel_ready(do)  # any view autograd hands over (e.g. stride 0 after a .sum())
    load().attention_backward(q, k, v, o, lse, do, dq, dk, dv, causal, scale, _stream(q))
    return dq, dk, dv


@_attention_bwd.register_fake
def _(q, k, v, o, lse, do, causal, scale):
    return attention_bwd_outputs(q, k)


def attention_forward(q, k, v, causal=True, scale=None):
    """(o, lse): the output (B, nh, Tq, hs), contiguous in q's dtype, and the float32 (B, nh, Tq)
    natural-log logsumexp of the visible scale * q.k that attention_backward takes."""
    kernel_device(OP, q, interpreted_ok=False)
    check_attention(OP, q, k, v, causal)
    return _attention_fwd(_kernel_ready(q), _kernel_ready(k), _kernel_ready(v), bool(causal),
                          softmax_scale(OP, q.size(-1), scale))


def attention_backward(q, k, v, o, lse, do, causal, scale=None):
    """Gradients (dq, dk, dv) of attention(q, k, v, causal, scale) given its output o, its saved
    lse (float32 (B, nh, Tq)) and the output's gradient do; they come back contiguous in q's
    dtype."""
    kernel_device(BWD_OP, q, interpreted_ok=False)
    check_attention_backward(BWD_OP, q, k, v, o, lse, do, causal)
    q, k, v, o = (_kernel_ready(t) for t in (q, k, v, o))
    return _attention_bwd(q, k, v, o, lse, do, bool(causal), softmax_scale(BWD_OP, q.size(-1), scale))


register_attention_autograd(_attention_fwd, _attention_bwd)


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale + mask) v, as mini_llm.ops.reference.attention: q (B, nh, Tq, hs),
    k and v (B, nh, Tk, hs) on one GPU, bf16 / fp16 (tensor cores) or fp32 (exact, slower), head
    dim in ATTENTION_HEAD_DIMS (mini_llm/ops/checks.py), any lengths (Tk >= 1); causal is
    bottom-right aligned (Tq <= Tk). Differentiable; returns (B, nh, Tq, hs) in q's dtype."""
    return attention_forward(q, k, v, causal, scale)[0]
