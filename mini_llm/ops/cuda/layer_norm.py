"""LayerNorm and RMSNorm on the CUDA kernels of csrc/layer_norm.cu, forward and backward, plain
and fused with the residual add (s = x + delta; y = norm(s)).

Two custom ops (torch.library.custom_op, with fake implementations and autograd) serve all four
public functions:

    mini_llm::cuda_layer_norm_fwd(x, delta?, weight, bias?, eps, rms) -> (s, y, mean, rstd)
    mini_llm::cuda_layer_norm_bwd(dy, ds?, x_in, weight, mean, rstd, has_bias, rms) -> (dx, dweight, dbias)

on 2-D contiguous (rows, C) tensors of one dtype, float32 weight / bias; s is empty unless fused,
mean empty for RMSNorm. The public functions reshape (..., C) to (rows, C) and make the dtypes
agree outside the ops, so autograd handles those casts: weight and bias are cast to float32 (C
elements: negligible), and when delta's dtype differs from x's (under bf16 autocast the
residual stream x is float32 and delta bfloat16) both are cast to the promoted dtype first,
which costs one extra elementwise pass over the narrower one; the Triton kernel reads mixed
dtypes directly instead.

Test:  python -m pytest -q tests/test_cuda_layer_norm.py      (the full grid needs a GPU)
Bench: ./build/layer_norm (csrc/standalone/layer_norm.cu), or `mini-llm bench` for the ops.
"""

from typing import Optional

import torch

from ..checks import check_norm, fail, kernel_device
from . import load

MAX_COLS = 8192  # kNormMaxCols in csrc/layer_norm.h: a row lives in one block's registers


@torch.library.custom_op("mini_llm::cuda_layer_norm_fwd", mutates_args=())
def _norm_fwd(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
              eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        y, s, mean, rstd = load().norm_forward(x, delta, weight, bias, eps, rms, stream)
    return s, y, mean, rstd


@_norm_fwd.register_fake
def _norm_fwd_fake(x, delta, weight, bias, eps, rms):
    rows = x.size(0)
    stats = dict(dtype=torch.float32, device=x.device)
    return (torch.empty(x.shape if delta is not None else (0,), dtype=x.dtype, device=x.device),
            torch.empty_like(x), torch.empty((0 if rms else rows,), **stats), torch.empty((rows,), **stats))


@torch.library.custom_op("mini_llm::cuda_layer_norm_bwd", mutates_args=())
def _norm_bwd(dy: torch.Tensor, ds: Optional[torch.Tensor], x_in: torch.Tensor, weight: torch.Tensor,
              mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, rms: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_in: what the forward normalised (x, or s when fused); ds: the gradient reaching s
    directly (fused only), added to dx. Returns (dx, dweight, dbias), dbias empty without bias."""
    with torch.cuda.device(x_in.device):
        stream = torch.cuda.current_stream().cuda_stream
        return load().norm_backward(dy, ds, x_in, weight, None if rms else mean, rstd, has_bias, rms, stream)


@_norm_bwd.register_fake
def _norm_bwd_fake(dy, ds, x_in, weight, mean, rstd, has_bias, rms):
    cols = x_in.size(1)
    return (torch.empty_like(x_in), torch.empty((cols,), dtype=torch.float32, device=x_in.device),
            torch.empty((cols if has_bias else 0,), dtype=torch.float32, device=x_in.device))


def _setup_context(ctx, inputs, output):
    x, delta, weight, bias, eps, rms = inputs
    s, _, mean, rstd = output
    ctx.save_for_backward(s if delta is not None else x, weight, mean, rstd)
    ctx.fused, ctx.has_bias, ctx.rms = delta is not None, bias is not None, rms


def _backward(ctx, ds, dy, _dmean, _drstd):
    x_in, weight, mean, rstd = ctx.saved_tensors
    dy = torch.zeros_like(x_in) if dy is None else dy.contiguous()
    ds = ds.contiguous() if ctx.fused and ds is not None else None
    dx, dweight, dbias = torch.ops.mini_llm.cuda_layer_norm_bwd(dy, ds, x_in, weight, mean, rstd, ctx.has_bias,
                                                                ctx.rms)
    # s = x + delta hands the same gradient to both
    return dx, dx if ctx.fused else None, dweight, dbias if ctx.has_bias else None, None, None


_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _norm(x, delta, weight, bias, eps, rms):
    """(s, y) of the fused op, (None, y) of the plain one, for x of any (..., C) shape."""
    op = ("add_" if delta is not None else "") + ("rms_norm" if rms else "layer_norm")
    C = check_norm(op, x, weight, bias, delta)
    if C > MAX_COLS:
        fail(op, f"rows of {C} channels are wider than the CUDA kernel's limit of {MAX_COLS} "
                 "(a row must fit in one block's registers)")
    kernel_device(op, x, interpreted_ok=False)
    dtype = x.dtype if delta is None else torch.promote_types(x.dtype, delta.dtype)
    x2 = x.to(dtype).reshape(-1, C).contiguous()
    delta2 = None if delta is None else delta.to(dtype).reshape(-1, C).contiguous()
    s, y, _, _ = torch.ops.mini_llm.cuda_layer_norm_fwd(
        x2, delta2, weight.float(), None if bias is None else bias.float(), float(eps), rms)
    return (None if delta is None else s.view(x.shape)), y.view(x.shape)


def layer_norm(x, weight, bias=None, eps=1e-5):
    return _norm(x, None, weight, bias, eps, rms=False)[1]


def rms_norm(x, weight, eps=1e-5):
    return _norm(x, None, weight, None, eps, rms=True)[1]


def add_layer_norm(x, delta, weight, bias=None, eps=1e-5):
    return _norm(x, delta, weight, bias, eps, rms=False)


def add_rms_norm(x, delta, weight, eps=1e-5):
    return _norm(x, delta, weight, None, eps, rms=True)
