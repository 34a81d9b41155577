"""CUDA FlashAttention-2: softmax(scale * q k^T + causal mask) v without the (Tq, Tk) score matrix.

The kernels are CUDA C++ in csrc/: the forward on tensor cores in attention_fwd.cu (mma.sync
m16n8k16 with float32 accumulation, cp.async double buffering, online softmax; its header
comment walks through the tiling), the backward in attention_bwd.cu (also tensor cores: a dq
kernel and a dk/dv kernel, no atomics), and a simple exact-float32 path for float32 inputs in
attention_fp32.cu. This file checks the inputs and registers both directions with torch.library
(ops mini_llm::cuda_attention_fwd / mini_llm::cuda_attention_bwd), so the op runs under autograd
and torch.compile. The forward saves lse (float32 (B, nh, Tq), natural-log logsumexp of the
visible scale * q.k), the same convention as the Triton kernels.

Inputs may be strided views (e.g. the model's .transpose(1, 2) of (B, T, nh, hs)) as long as the
head dim has stride 1; a view whose other strides or start the kernels cannot copy in 16-byte
pieces is copied first. Outputs and gradients come back contiguous.

    pytest -q tests/test_cuda_attention.py        # reference checks run with -m gpu on a GPU
"""

import math

import torch

from ..checks import check_attention, fail, kernel_device
from . import load

OP = "attention (cuda)"


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
    B, nh, t_q, hs = q.shape
    out = torch.empty(B, nh, t_q, hs, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, nh, t_q, dtype=torch.float32, device=q.device)
    load().attention_forward(q, k, v, out, lse, causal, scale, _stream(q))
    return out, lse


@_attention_fwd.register_fake
def _(q, k, v, causal, scale):
    B, nh, t_q, hs = q.shape
    return q.new_empty(B, nh, t_q, hs), q.new_empty(B, nh, t_q, dtype=torch.float32)


@torch.library.custom_op("mini_llm::cuda_attention_bwd", mutates_args=())
def _attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   dout: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=q.dtype, device=q.device)
    dv = torch.empty(k.shape, dtype=q.dtype, device=q.device)
    load().attention_backward(q, k, v, out, lse, dout, dq, dk, dv, causal, scale, _stream(q))
    return dq, dk, dv


@_attention_bwd.register_fake
def _(q, k, v, out, lse, dout, causal, scale):
    return q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(k.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)  # saved for the backward, not a result of the math op


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    # dout may be any view autograd hands over (e.g. stride 0 after a .sum()).
    dq, dk, dv = _attention_bwd(q, k, v, out, lse, _kernel_ready(dout), ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale + mask) v, as mini_llm.ops.reference.attention: q (B, nh, Tq, hs),
    k and v (B, nh, Tk, hs) on one GPU, bf16 / fp16 (tensor cores) or fp32 (exact, slower), head
    dim 32, 64 or 128, any lengths (Tk >= 1); causal is bottom-right aligned (Tq <= Tk).
    Differentiable; returns (B, nh, Tq, hs) in q's dtype."""
    kernel_device(OP, q, interpreted_ok=False)
    check_attention(OP, q, k, v, causal)
    if k.size(2) == 0:
        fail(OP, "k and v must hold at least one position (Tk >= 1)")
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)
    return _attention_fwd(_kernel_ready(q), _kernel_ready(k), _kernel_ready(v), bool(causal), scale)[0]
