"""What the two kernel backends (Triton: kernels/*.py; CUDA: mini_llm/ops/cuda/*.py) share
around their torch.library ops, so that an op's forward saves the same tensors and calls its
backward the same way on both, and their fake (meta) implementations allocate the same outputs.

The differentiable ops, as registered by each backend (<backend> = triton or cuda):

    mini_llm::<backend>_layer_norm_fwd(x, delta?, weight, bias?, eps, rms) -> (s, y, mean, rstd)
        s = x + delta (empty (0,) unless fused), y = norm(s or x), mean (empty (0,) for RMSNorm)
        and rstd per row, float32. Saves (xs, weight, mean, rstd), xs = s if fused else x.
    mini_llm::<backend>_layer_norm_bwd(dy, ds?, xs, weight, mean, rstd, rms, x_dtype,
                                        delta_dtype?, bias_dtype?) -> (dx, ddelta, dw, db)
        ds (fused only) is the gradient reaching s directly; ddelta is empty unless delta's
        dtype differs from x's (it is dx otherwise), db empty without a bias.
    mini_llm::<backend>_attention_fwd(q, k, v, causal, scale) -> (o, lse)
        lse float32 (B, nh, Tq), the natural-log logsumexp of the visible scale * q.k; not
        differentiable. Saves (q, k, v, o, lse).
    mini_llm::<backend>_attention_bwd(q, k, v, o, lse, do, causal, scale) -> (dq, dk, dv)

The public functions over them, and the inference-only ops, are listed in
mini_llm/ops/__init__.py.
"""

import torch

# -- layer_norm / rms_norm and the fused add --


def norm_fwd_outputs(x, delta, rms):
    """Empty (s, y, mean, rstd) for x (..., C); s is (0,) unless fused, mean (0,) for RMSNorm;
    s and y in the promoted dtype of x and delta."""
    n_rows = x.numel() // x.size(-1)
    dtype = x.dtype if delta is None else torch.promote_types(x.dtype, delta.dtype)
    s = torch.empty(x.shape if delta is not None else (0,), dtype=dtype, device=x.device)
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    mean = torch.empty((0 if rms else n_rows,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((n_rows,), dtype=torch.float32, device=x.device)
    return s, y, mean, rstd


def norm_bwd_outputs(xs, weight, x_dtype, delta_dtype, bias_dtype):
    """Empty (dx, ddelta, dw, db); ddelta is (0,) unless fused with a delta dtype unlike x's
    (otherwise it equals dx), db (0,) without a bias."""
    split = delta_dtype is not None and delta_dtype != x_dtype
    dx = torch.empty(xs.shape, dtype=x_dtype, device=xs.device)
    ddelta = torch.empty(xs.shape if split else (0,), dtype=delta_dtype or x_dtype, device=xs.device)
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=xs.device)
    db = torch.empty(weight.shape if bias_dtype else (0,), dtype=bias_dtype or weight.dtype,
                     device=xs.device)
    return dx, ddelta, dw, db


def register_norm_autograd(fwd_op, bwd_op):
    """Make fwd_op (a *_layer_norm_fwd) differentiable through bwd_op (its *_layer_norm_bwd)."""

    def setup_context(ctx, inputs, output):
        x, delta, weight, bias, eps, rms = inputs
        s, _, mean, rstd = output
        ctx.save_for_backward(s if delta is not None else x, weight, mean, rstd)
        ctx.rms, ctx.x_dtype = rms, x.dtype
        ctx.delta_dtype = None if delta is None else delta.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype

    def backward(ctx, ds, dy, _dmean, _drstd):
        xs, weight, mean, rstd = ctx.saved_tensors
        fused = ctx.delta_dtype is not None
        dx, ddelta, dw, db = bwd_op(dy, ds if fused else None, xs, weight, mean, rstd, ctx.rms,
                                    ctx.x_dtype, ctx.delta_dtype, ctx.bias_dtype)
        if fused and ctx.delta_dtype == ctx.x_dtype:
            ddelta = dx  # s = x + delta passes one gradient to both, as PyTorch's add does
        return dx, ddelta if fused else None, dw, db if ctx.bias_dtype else None, None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)


# -- attention --


def attention_fwd_outputs(q):
    """Empty (o, lse) for q (B, nh, Tq, hs): o contiguous in q's dtype, lse float32 (B, nh, Tq)."""
    B, nh, t_q, hs = q.shape
    return (torch.empty((B, nh, t_q, hs), dtype=q.dtype, device=q.device),
            torch.empty((B, nh, t_q), dtype=torch.float32, device=q.device))


def attention_bwd_outputs(q, k):
    """Empty (dq, dk, dv), contiguous in q's dtype."""
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=q.dtype, device=q.device))


def register_attention_autograd(fwd_op, bwd_op):
    """Make fwd_op (an *_attention_fwd) differentiable through bwd_op (its *_attention_bwd)."""

    def setup_context(ctx, inputs, output):
        q, k, v, causal, scale = inputs
        o, lse = output
        ctx.mark_non_differentiable(lse)  # saved for the backward, not a result of the math op
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale

    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        if do.stride(-1) != 1:  # e.g. the expanded gradient of a .sum(): the kernels read rows
            do = do.contiguous()
        dq, dk, dv = bwd_op(q, k, v, o, lse, do, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
