"""The CUDA LayerNorm / RMSNorm (csrc/layer_norm.cu, mini_llm/ops/cuda/layer_norm.py) against the
float64 reference: outputs and every gradient, plain and fused with the residual add.

Unmarked (CPU, run in CI): the binding and the wrappers reject bad inputs with clear errors, and
the custom ops' fake implementations and autograd wiring give the right shapes and dtypes (on
meta tensors). @pytest.mark.gpu: the full grid (widths up to 8192, odd and scalar-path widths,
up to 16384 rows; fp32 / fp16 / bf16; with and without bias), mixed dtypes, misaligned inputs,
determinism, opcheck and torch.compile.

    python -m pytest -q tests/test_cuda_layer_norm.py          # add -m gpu on a GPU machine
"""

import pytest
import torch

from kernel_check import assert_matches
from mini_llm.errors import KernelInputError
from mini_llm.ops import reference
from mini_llm.ops.checks import CUDA_NORM_MAX_COLS
from mini_llm.ops.cuda import layer_norm as cuda_ln

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# name: (public function, has bias, fused with a delta)
VARIANTS = {
    "layer_norm": ("layer_norm", True, False),
    "layer_norm_no_bias": ("layer_norm", False, False),
    "rms_norm": ("rms_norm", False, False),
    "add_layer_norm": ("add_layer_norm", True, True),
    "add_rms_norm": ("add_rms_norm", False, True),
}
# 1 row / 1 column; odd widths (the scalar path: not a multiple of 16 bytes); a warp per row
# (narrow); blocks per row; the widest row, odd and even; many rows.
SHAPES = [(1, 1), (3, 37), (1, 768), (64, 768), (257, 1000), (100, 1001), (33, 4096), (17, 8192), (5, 8191),
          (16384, 4096)]
BIG = (16384, 8192)  # largest shape, in every dtype but fewer variants (the float64 reference is ~1 GB a tensor)


def _inputs(shape, dtype, variant, param_dtype=None, delta_dtype=None, device="cuda"):
    """Fresh seeded random inputs (with a mean and a spread, so centring matters) for a variant."""
    _, has_bias, fused = VARIANTS[variant]
    rows, cols = shape
    param_dtype = param_dtype or dtype
    x = (torch.randn(rows, cols, device=device) * 2 + 0.5).to(dtype)
    weight = (torch.randn(cols, device=device) * 0.5 + 1).to(param_dtype)
    bias = (torch.randn(cols, device=device) * 0.5).to(param_dtype) if has_bias else None
    delta = torch.randn(rows, cols, device=device).to(delta_dtype or dtype) if fused else None
    return x, delta, weight, bias


def _call(impl, variant, x, delta, weight, bias):
    """The variant's outputs as a tuple ((y,) or (s, y))."""
    name, has_bias, fused = VARIANTS[variant]
    fn = getattr(impl, name)
    args = (x, delta, weight) if fused else (x, weight)
    out = fn(*args, bias) if has_bias else fn(*args)
    return tuple(out) if fused else (out,)


def _check_against_reference(variant, x, delta, weight, bias):
    """Outputs and gradients of every input vs the float64 reference, for random upstream grads."""
    live = [t.detach().requires_grad_() if t is not None else None for t in (x, delta, weight, bias)]
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in (x, delta, weight, bias)]
    got, want = _call(cuda_ln, variant, *live), _call(reference, variant, *ref)
    upstream = [torch.randn_like(g) for g in got]
    leaves = [t for t in live if t is not None]
    got_grads = torch.autograd.grad(got, leaves, upstream)
    want_grads = torch.autograd.grad(want, [t for t in ref if t is not None], [u.double() for u in upstream])
    assert_matches([*got, *got_grads], [*want, *want_grads])


# ---- CPU: input checks, fake implementations, autograd wiring ---------------------------------


def test_binding_rejects_cpu_tensors(cuda_ext):
    x = torch.randn(3, 40)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor, got one on cpu"):
        cuda_ext.norm_forward(x, None, torch.ones(40), None, 1e-5, False, 0)
    with pytest.raises(RuntimeError, match="xs must be a CUDA tensor, got one on cpu"):
        cuda_ext.norm_backward(x, None, x, torch.ones(40), None, torch.ones(3), True, False, 0)


def test_wrappers_reject_bad_inputs_before_building_anything():
    x, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(KernelInputError, match=r"layer_norm \(cuda\): inputs must be CUDA tensors"):
        cuda_ln.layer_norm(x, w)
    with pytest.raises(KernelInputError, match=r"rms_norm \(cuda\): weight must have shape \(8,\)"):
        cuda_ln.rms_norm(x, torch.ones(7))
    with pytest.raises(KernelInputError, match=r"add_layer_norm \(cuda\): delta \(2, 4\) must have the shape"):
        cuda_ln.add_layer_norm(x, torch.randn(2, 4), w)
    with pytest.raises(KernelInputError, match=r"add_rms_norm \(cuda\): x has dtype torch.int64"):
        cuda_ln.add_rms_norm(x.long(), x, w)
    with pytest.raises(KernelInputError, match=f"wider than this kernel's limit of {CUDA_NORM_MAX_COLS}"):
        cuda_ln.layer_norm(torch.randn(2, CUDA_NORM_MAX_COLS + 1), torch.ones(CUDA_NORM_MAX_COLS + 1))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fake_and_autograd_give_the_right_shapes_and_dtypes(variant):
    """The ops on meta tensors run only their fake implementations: forward, then backward."""
    _, has_bias, fused = VARIANTS[variant]
    rms = "rms" in variant
    x, delta, weight, bias = (t.requires_grad_() if t is not None else None
                              for t in _inputs((6, 40), torch.bfloat16, variant, torch.float32, device="meta"))
    s, y, mean, rstd = torch.ops.mini_llm.cuda_layer_norm_fwd(x, delta, weight, bias, 1e-5, rms)
    assert (tuple(s.shape), y.shape, y.dtype) == ((6, 40) if fused else (0,), x.shape, x.dtype)
    assert (tuple(mean.shape), tuple(rstd.shape), rstd.dtype) == ((0,) if rms else (6,), (6,), torch.float32)
    (y.sum() + (s.sum() if fused else 0)).backward()
    assert (x.grad.shape, x.grad.dtype, weight.grad.shape, weight.grad.dtype) == (
        x.shape, x.dtype, weight.shape, torch.float32)
    assert (delta.grad.shape if fused else None) == (x.shape if fused else None)
    assert (bias.grad.shape if has_bias else None) == (weight.shape if has_bias else None)


# ---- GPU: against the reference ---------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_reference(shape, dtype, variant):
    _check_against_reference(variant, *_inputs(shape, dtype, variant))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["layer_norm", "add_rms_norm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_at_the_largest_shape(dtype, variant):
    _check_against_reference(variant, *_inputs(BIG, dtype, variant))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mixed_dtypes_as_under_autocast(variant):
    """bf16 activations with fp32 parameters; fused: an fp32 residual stream plus a bf16 delta
    (s and y then fp32). Each gradient comes back in its input's dtype."""
    x_dtype = torch.float32 if VARIANTS[variant][2] else torch.bfloat16
    inputs = _inputs((70, 1536), x_dtype, variant, param_dtype=torch.float32, delta_dtype=torch.bfloat16)
    _check_against_reference(variant, *inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_rows_take_the_scalar_path(dtype):
    """x starting one element past a 16-byte boundary: no 128-bit accesses, same results."""
    rows, cols = 9, 1024
    flat = torch.randn(rows * cols + 1, device="cuda").to(dtype)
    x = flat[1:].view(rows, cols)
    assert x.data_ptr() % 16 != 0
    _check_against_reference("add_layer_norm", x, torch.randn_like(x), *_inputs((rows, cols), dtype, "layer_norm")[2:])


@pytest.mark.gpu
def test_leading_dims_and_strided_rows():
    """(B, T, C) input, and a view whose rows are strided (last dim contiguous)."""
    x = torch.randn(3, 50, 384, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(384, device="cuda"), torch.randn(384, device="cuda")
    assert_matches(cuda_ln.layer_norm(x, w, b), reference.layer_norm(x.double(), w.double(), b.double()))
    strided = torch.randn(40, 1000, device="cuda")[:, :768]
    assert_matches(cuda_ln.rms_norm(strided, w.repeat(2)), reference.rms_norm(strided.double(), w.repeat(2).double()))


@pytest.mark.gpu
def test_parameter_gradients_are_deterministic():
    x, _, weight, bias = _inputs((4096, 1000), torch.bfloat16, "layer_norm")
    weight.requires_grad_(), bias.requires_grad_()
    dy = torch.randn_like(x)
    runs = [torch.autograd.grad(cuda_ln.layer_norm(x, weight, bias), (weight, bias), dy) for _ in range(3)]
    for dw, db in runs[1:]:
        assert torch.equal(dw, runs[0][0]) and torch.equal(db, runs[0][1])


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["layer_norm", "add_rms_norm"])
def test_opcheck(variant):
    """torch.library.opcheck: schema, fake implementation, autograd registration."""
    x, delta, weight, bias = _inputs((8, 64), torch.float16, variant, param_dtype=torch.float32)
    x.requires_grad_(), weight.requires_grad_()
    rms = "rms" in variant
    torch.library.opcheck(torch.ops.mini_llm.cuda_layer_norm_fwd.default, (x, delta, weight, bias, 1e-5, rms))
    s, _, mean, rstd = torch.ops.mini_llm.cuda_layer_norm_fwd(x, delta, weight, bias, 1e-5, rms)
    xs, dy = (s if delta is not None else x).detach(), torch.randn_like(x)
    torch.library.opcheck(torch.ops.mini_llm.cuda_layer_norm_bwd.default,
                          (dy, dy if delta is not None else None, xs, weight.detach(), mean, rstd, rms, x.dtype,
                           None if delta is None else delta.dtype, None if bias is None else bias.dtype))


@pytest.mark.gpu
def test_torch_compile_matches_eager():
    x, delta, weight, _ = _inputs((33, 1000), torch.bfloat16, "add_rms_norm")
    compiled = torch.compile(cuda_ln.add_rms_norm, fullgraph=True)
    for got, want in zip(compiled(x, delta, weight), cuda_ln.add_rms_norm(x, delta, weight)):
        assert torch.equal(got, want)
