"""LayerNorm and RMSNorm in Triton, forward and backward, plain and fused with the residual add.

    y = (x - mean) * rstd * w + b      LayerNorm, rstd = 1 / sqrt(mean((x - mean)^2) + eps)
    y = x * rstd * w                   RMSNorm,   rstd = 1 / sqrt(mean(x^2) + eps)
    s = x + delta;  y = norm(s)        add_layer_norm / add_rms_norm: the residual add fused in

One kernel pair serves all four ops: constexpr flags (IS_RMS, HAS_BIAS, HAS_DELTA) remove the
centring, the bias and the residual add at compile time, so RMSNorm is not a copy.

_norm_fwd_kernel: one program normalises ROWS whole rows held in registers (ROWS > 1 only for
  narrow rows, so that each program still moves a few KB) and saves rstd (and mean) per row,
  fp32, for the backward. The op is memory bound: x (and delta) are read once, y (and s)
  written once; all arithmetic is in fp32 whatever the storage dtype.
_norm_bwd_kernel: with xhat = (x - mean) * rstd and g = w * dy, per row
      dx = rstd * (g - xhat * mean(g * xhat) - mean(g))     (RMSNorm: without the mean(g) term)
  plus ds, the gradient that reaches s directly, for the fused ops. dw = sum_rows dy * xhat and
  db = sum_rows dy need every row: instead of atomics each program walks its own block of rows,
  keeps partial dw/db in fp32 registers and writes them to a (programs, C) buffer, which a
  second pass sums over programs. Deterministic, and the buffer (about SMs x C) is small next
  to x and dy.

Registers bound the design: a row lives in registers, 16 elements per thread. Compiled for
sm_90a (ptxas -v), the forward needs 40-64 registers and never spills up to C = 16384; the
backward needs ~100-150 up to C = 8192 and spills a little at 16384 for LayerNorm (~200 B per
thread, RMSNorm ~20 B); beyond 16384 both spill, correct but slower, up to
TRITON_NORM_MAX_COLS (mini_llm/ops/checks.py).

Both are registered with torch.library.triton_op (mini_llm::triton_layer_norm_fwd / _bwd), with
fake implementations and autograd, so the public functions below work under autograd and
torch.compile. Their schemas, what the forward saves and the autograd wiring are the CUDA
backend's too (mini_llm/ops/kernel_autograd.py).

Test:   python -m pytest -q tests/test_triton_layer_norm.py    (CPU: runs TRITON_INTERPRET=1)
Bench:  python -m mini_llm.kernels.layer_norm                  (GPU: GB/s vs PyTorch and a copy)
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from mini_llm.ops.checks import TRITON_NORM_MAX_COLS, check_norm, norm_op
from mini_llm.ops.kernel_autograd import norm_bwd_outputs, norm_fwd_outputs, register_norm_autograd

from .common import INTERPRETED, sm_count


@triton.jit
def _norm_fwd_kernel(
    X, DELTA, S, Y, W, B, MEAN, RSTD,  # X, DELTA, S, Y: (n_rows, C); W, B: (C,); MEAN, RSTD: (n_rows,)
    stride_x, stride_delta, stride_s, stride_y,  # row strides in elements; columns are contiguous
    n_rows, C, eps,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DELTA: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    row_ok, col_ok = rows < n_rows, cols < C
    mask = row_ok[:, None] & col_ok[None, :]  # (ROWS, BLOCK_C)
    rows = rows.to(tl.int64)  # row * stride passes 2**31 elements on big inputs
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        delta = tl.load(DELTA + rows[:, None] * stride_delta + cols[None, :], mask=mask, other=0.0)
        s = (x + delta.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + rows[:, None] * stride_s + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)  # normalise s as stored (rounded to its dtype), like the reference

    if IS_RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / C  # (ROWS,)
        xc = tl.where(mask, x - mean[:, None], 0.0)  # padding must not count in the variance
        tl.store(MEAN + rows, mean, mask=row_ok)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / C + eps)  # (ROWS,); biased variance
    tl.store(RSTD + rows, rstd, mask=row_ok)

    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)  # loaded late: fewer live registers
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    DY, DS, XS, W, MEAN, RSTD,  # DY, DS, XS (the normalised input: x, or s if fused): (n_rows, C)
    DX, DDELTA, DW_PARTIAL, DB_PARTIAL,  # DX, DDELTA: (n_rows, C); partials: (programs, C) fp32
    stride_dy, stride_ds, stride_xs, stride_dx, stride_ddelta,
    n_rows, C, rows_per_program,  # rows_per_program: a multiple of ROWS
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
    IS_RMS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DS: tl.constexpr, HAS_DDELTA: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)  # this program's share of dw and db
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    first = pid * rows_per_program
    end = tl.minimum(first + rows_per_program, n_rows)
    for tile in range(first, end, ROWS):
        rows = tile + tl.arange(0, ROWS)
        row_ok = rows < end
        mask = row_ok[:, None] & col_ok[None, :]  # (ROWS, BLOCK_C)
        rows = rows.to(tl.int64)
        # Masked elements load as 0: their g is 0, so they add nothing to the sums below.
        xs = tl.load(XS + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)[:, None]  # (ROWS, 1)
        if IS_RMS:
            xhat = xs * rstd
        else:
            xhat = (xs - tl.load(MEAN + rows, mask=row_ok, other=0.0)[:, None]) * rstd
        # dw, db first, so that dy is dead before the row sums below (fewer live registers);
        # w is re-read per tile (an L1 hit) rather than held in registers across the loop.
        dw += tl.sum(dy * xhat, axis=0)
        if HAS_BIAS:
            db += tl.sum(dy, axis=0)
        g = dy * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if IS_RMS:
            dx = g - xhat * (tl.sum(g * xhat, axis=1) / C)[:, None]
        else:  # both row sums in one reduction: one trip through shared memory, not two
            c1, c2 = tl.split(tl.sum(tl.join(g * xhat, g), axis=1))
            dx = g - xhat * (c1 / C)[:, None] - (c2 / C)[:, None]
        dx *= rstd
        if HAS_DS:
            ds = tl.load(DS + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0)
            dx += ds.to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_DDELTA:  # the fused ops, when delta's dtype differs from x's
            tl.store(DDELTA + rows[:, None] * stride_ddelta + cols[None, :],
                     dx.to(DDELTA.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid * C + cols, dw, mask=col_ok)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * C + cols, db, mask=col_ok)


# ---- launch configuration -------------------------------------------------------------------


def _tile(n_rows, C):
    """(ROWS, BLOCK_C, num_warps): a whole row per program, several when rows are narrow, and
    enough warps that each thread holds ~16 elements (one or two 16-byte vectors per tensor)."""
    block_c = triton.next_power_of_2(C)
    rows = min(max(1, 2048 // block_c), 16, triton.next_power_of_2(max(n_rows, 1)))
    return rows, block_c, min(max(rows * block_c // 512, 1), 32)


def _bwd_programs(device, n_rows, rows_per_tile, num_warps):
    """(programs, rows_per_program) for the backward: as many programs as fit on the GPU at once
    (at ~128 registers per thread, 16 warps per SM), so the partial dw/db buffer stays small."""
    n_tiles = triton.cdiv(n_rows, rows_per_tile)
    if device.type == "cuda":
        slots = sm_count(device.index or 0) * max(1, 16 // num_warps)
    else:  # interpreter: a few programs, so the tests cover the split and its reduction
        slots = 3
    tiles_per_program = triton.cdiv(n_tiles, max(1, min(n_tiles, slots)))
    rows_per_program = tiles_per_program * rows_per_tile
    return max(1, triton.cdiv(n_rows, rows_per_program)), rows_per_program


def _rows(t, C):
    """t (..., C) as (rows, C) with contiguous columns: a view when the layout allows."""
    t = t.reshape(-1, C)
    return t if t.stride(1) == 1 or C == 1 else t.contiguous()


def _check_fwd(x, delta, weight, bias, rms):
    """C; the kernels read mixed dtypes (bf16 delta into an fp32 x), so nothing is cast."""
    return check_norm(f"{norm_op(delta, rms)} (triton)", x, weight, bias, delta, TRITON_NORM_MAX_COLS)


# ---- torch.library ops ----------------------------------------------------------------------


@triton_op("mini_llm::triton_layer_norm_fwd", mutates_args=())
def _norm_fwd(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
              bias: Optional[torch.Tensor], eps: float, rms: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    C = _check_fwd(x, delta, weight, bias, rms)
    s, y, mean, rstd = norm_fwd_outputs(x, delta, rms)
    x2, y2 = _rows(x, C), y.view(-1, C)
    d2 = _rows(delta, C) if delta is not None else None
    s2 = s.view(-1, C) if delta is not None else None
    n_rows = x2.size(0)
    rows, block_c, num_warps = _tile(n_rows, C)
    wrap_triton(_norm_fwd_kernel)[(max(1, triton.cdiv(n_rows, rows)),)](
        x2, d2, s2, y2, weight.contiguous(), None if bias is None else bias.contiguous(),
        None if rms else mean, rstd,
        x2.stride(0), 0 if d2 is None else d2.stride(0), 0 if s2 is None else s2.stride(0), y2.stride(0),
        n_rows, C, eps,
        ROWS=rows, BLOCK_C=block_c, IS_RMS=rms, HAS_BIAS=bias is not None, HAS_DELTA=delta is not None,
        num_warps=num_warps,
    )
    return s, y, mean, rstd


@_norm_fwd.register_fake
def _norm_fwd_fake(x, delta, weight, bias, eps, rms):
    _check_fwd(x, delta, weight, bias, rms)
    return norm_fwd_outputs(x, delta, rms)


@triton_op("mini_llm::triton_layer_norm_bwd", mutates_args=())
def _norm_bwd(dy: torch.Tensor, ds: Optional[torch.Tensor], xs: torch.Tensor, weight: torch.Tensor,
              mean: torch.Tensor, rstd: torch.Tensor, rms: bool, x_dtype: torch.dtype,
              delta_dtype: Optional[torch.dtype], bias_dtype: Optional[torch.dtype]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of x, delta, weight, bias; xs is the input that was normalised (s if fused)."""
    C = xs.size(-1)
    dx, ddelta, dw, db = norm_bwd_outputs(xs, weight, x_dtype, delta_dtype, bias_dtype)
    xs2, dy2, dx2 = _rows(xs, C), _rows(dy, C), dx.view(-1, C)
    ds2 = _rows(ds, C) if ds is not None else None
    ddelta2 = ddelta.view(-1, C) if ddelta.numel() else None
    n_rows = xs2.size(0)
    rows, block_c, num_warps = _tile(n_rows, C)
    programs, rows_per_program = _bwd_programs(xs.device, n_rows, rows, num_warps)
    dw_partial = torch.empty((programs, C), dtype=torch.float32, device=xs.device)
    db_partial = torch.empty((programs, C), dtype=torch.float32, device=xs.device) if bias_dtype else None
    wrap_triton(_norm_bwd_kernel)[(programs,)](
        dy2, ds2, xs2, weight.contiguous(), None if rms else mean, rstd,
        dx2, ddelta2, dw_partial, db_partial,
        dy2.stride(0), 0 if ds2 is None else ds2.stride(0), xs2.stride(0), dx2.stride(0),
        0 if ddelta2 is None else ddelta2.stride(0),
        n_rows, C, rows_per_program,
        ROWS=rows, BLOCK_C=block_c, IS_RMS=rms, HAS_BIAS=bias_dtype is not None,
        HAS_DS=ds is not None, HAS_DDELTA=ddelta2 is not None, num_warps=num_warps,
    )
    dw.copy_(dw_partial.sum(0))  # the second pass: a fixed-order reduction over programs
    if bias_dtype is not None:
        db.copy_(db_partial.sum(0))
    return dx, ddelta, dw, db


@_norm_bwd.register_fake
def _norm_bwd_fake(dy, ds, xs, weight, mean, rstd, rms, x_dtype, delta_dtype, bias_dtype):
    return norm_bwd_outputs(xs, weight, x_dtype, delta_dtype, bias_dtype)


register_norm_autograd(_norm_fwd, _norm_bwd)


# ---- public functions (the contract of mini_llm/ops/__init__.py) -------------------------


def layer_norm(x, weight, bias=None, eps=1e-5):
    return torch.ops.mini_llm.triton_layer_norm_fwd(x, None, weight, bias, float(eps), False)[1]


def rms_norm(x, weight, eps=1e-5):
    return torch.ops.mini_llm.triton_layer_norm_fwd(x, None, weight, None, float(eps), True)[1]


def add_layer_norm(x, delta, weight, bias=None, eps=1e-5):
    s, y, _, _ = torch.ops.mini_llm.triton_layer_norm_fwd(x, delta, weight, bias, float(eps), False)
    return s, y


def add_rms_norm(x, delta, weight, eps=1e-5):
    s, y, _, _ = torch.ops.mini_llm.triton_layer_norm_fwd(x, delta, weight, None, float(eps), True)
    return s, y


def _bench():
    """GB/s on a GPU, like the Triton tutorials: these kernels against PyTorch (F.layer_norm,
    F.rms_norm; an add then F.rms_norm for the fused op) and a plain copy (the ceiling). Bytes:
    every (rows, C) tensor read or written once (the backward re-reads x or s)."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    print(f"{'op':<13}{'dtype':<9}{'rows x C':>13}{'copy':>7}{'fwd':>7}{'torch':>7}{'%copy':>7}"
          f"{'fwd+bwd':>9}{'torch':>7}   (GB/s)")
    for dtype in (torch.bfloat16, torch.float32):
        for n_rows, C in ((16384, 1024), (16384, 4096), (16384, 8192), (4096, 16384)):
            x, delta, dy, ds, buf = (torch.randn(n_rows, C, device="cuda", dtype=dtype) for _ in range(5))
            w, b = (torch.randn(C, device="cuda", dtype=dtype) for _ in range(2))
            for t in (x, delta, w, b):
                t.requires_grad_()
            nbytes = x.numel() * x.element_size()

            def gbps(passes, fn):  # passes: how many (rows, C) tensors fn reads or writes
                return passes * nbytes / do_bench(fn) * 1e-6

            def fwd_bwd(fn):
                outs = fn()
                return lambda: torch.autograd.grad(fn(), (x, w), (dy, ds)[:len(outs)])

            def torch_add_rms_norm():
                s = x + delta
                return s, F.rms_norm(s, (C,), w)

            cases = {  # name: (ours, PyTorch's, passes fwd, passes fwd+bwd)
                "layer_norm": (lambda: [layer_norm(x, w, b)], lambda: [F.layer_norm(x, (C,), w, b)], 2, 5),
                "rms_norm": (lambda: [rms_norm(x, w)], lambda: [F.rms_norm(x, (C,), w)], 2, 5),
                "add_rms_norm": (lambda: add_rms_norm(x, delta, w), torch_add_rms_norm, 4, 8),
            }
            copy = gbps(2, lambda: buf.copy_(x))
            for name, (ours, theirs, fwd_passes, all_passes) in cases.items():
                fwd = [gbps(fwd_passes, fn) for fn in (ours, theirs)]
                both = [gbps(all_passes, fwd_bwd(fn)) for fn in (ours, theirs)]
                print(f"{name:<13}{str(dtype)[6:]:<9}{f'{n_rows} x {C}':>13}{copy:7.0f}{fwd[0]:7.0f}"
                      f"{fwd[1]:7.0f}{100 * fwd[0] / copy:6.0f}%{both[0]:9.0f}{both[1]:7.0f}")

if __name__ == "__main__":
    assert torch.cuda.is_available() and not INTERPRETED, "needs a GPU"
    _bench()
