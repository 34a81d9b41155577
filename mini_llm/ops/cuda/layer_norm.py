"""LayerNorm and RMSNorm on the CUDA kernels of csrc/layer_norm.cu, forward and backward, plain
and fused with the residual add (s = x + delta; y = norm(s)).

Two custom ops (torch.library.custom_op, with fake implementations and autograd) serve all four
public functions, with the Triton backend's schemas and autograd wiring
(mini_llm/ops/kernel_autograd.py):

    mini_llm::cuda_layer_norm_fwd(x, delta?, weight, bias?, eps, rms) -> (s, y, mean, rstd)
    mini_llm::cuda_layer_norm_bwd(dy, ds?, xs, weight, mean, rstd, rms, x_dtype, delta_dtype?,
                                  bias_dtype?) -> (dx, ddelta, dw, db)

Unlike the Triton kernels, these take 2-D contiguous (rows, C) tensors of one dtype and float32
weight / bias: the public functions reshape (..., C) to (rows, C) and make the dtypes agree
outside the ops, so autograd handles those casts. weight and bias are cast to float32 (C
elements: negligible); when delta's dtype differs from x's (under bf16 autocast the residual
stream x is float32 and delta bfloat16) both are cast to the promoted dtype first, which costs
one extra elementwise pass over the narrower one, where the Triton kernel reads mixed dtypes
directly. So here delta_dtype is always x_dtype, and ddelta always empty (delta's gradient is dx).

Test:  python -m pytest -q tests/test_cuda_layer_norm.py      (the full grid needs a GPU)
Bench: ./build/layer_norm (csrc/standalone/layer_norm.cu), or `mini-llm bench` for the ops.
"""

from typing import Optional

import torch

from ..checks import CUDA_NORM_MAX_COLS, check_norm, kernel_device, norm_op
from ..kernel_autograd import norm_bwd_outputs, norm_fwd_outputs, register_norm_autograd
from . import load


@torch.library.custom_op("mini_llm::cuda_layer_norm_fwd", mutates_args=())
def _norm_fwd(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
              eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        return load().norm_forward(x, delta, weight, bias, eps, rms, stream)


@_norm_fwd.register_fake
def _norm_fwd_fake(x, delta, weight, bias, eps, rms):
    return norm_fwd_outputs(x, delta, rms)


@torch.library.custom_op("mini_llm::cuda_layer_norm_bwd", mutates_args=())
def _norm_bwd(dy: torch.Tensor, ds: Optional[torch.Tensor], xs: torch.Tensor, weight: torch.Tensor,
              mean: torch.Tensor, rstd: torch.Tensor, rms: bool, x_dtype: torch.dtype,
              delta_dtype: Optional[torch.dtype], bias_dtype: Optional[torch.dtype]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of x, delta (empty: one dtype here, so it is dx), weight, bias; xs is the input
    that was normalised (s if fused), ds the gradient reaching s directly (fused only)."""
    with torch.cuda.device(xs.device):
        stream = torch.cuda.current_stream().cuda_stream
        dx, dw, db = load().norm_backward(dy.contiguous(), None if ds is None else ds.contiguous(), xs, weight,
                                          None if rms else mean, rstd, rms, bias_dtype is not None, stream)
    return dx, xs.new_empty((0,)), dw, db


@_norm_bwd.register_fake
def _norm_bwd_fake(dy, ds, xs, weight, mean, rstd, rms, x_dtype, delta_dtype, bias_dtype):
    return norm_bwd_outputs(xs, weight, x_dtype, delta_dtype, bias_dtype)


register_norm_autograd(_norm_fwd, _norm_bwd)


def _norm(x, delta, weight, bias, eps, rms):
    """(s, y) of the fused op, (None, y) of the plain one, for x of any (..., C) shape."""
    op = f"{norm_op(delta, rms)} (cuda)"
    C = check_norm(op, x, weight, bias, delta, CUDA_NORM_MAX_COLS)
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
