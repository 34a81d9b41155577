"""The Triton LayerNorm / RMSNorm kernels (kernels/layer_norm.py) against the float64 reference:
outputs and every gradient, plain and fused with the residual add, on odd shapes; the autocast
dtype mix; input checks; the torch.library registration. On CPU the kernels run in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1); the `gpu` tests add the big grid and
torch.compile.   Run: python -m pytest -q tests/test_triton_layer_norm.py
"""

import re

import pytest
import torch

from kernel_check import DEVICE, assert_matches
from mini_llm.errors import KernelInputError
from mini_llm.ops import reference
from mini_llm.ops.checks import TRITON_NORM_MAX_COLS

ln = pytest.importorskip("mini_llm.kernels.layer_norm")

# name -> (rms, has bias)
KINDS = {"layer_norm": (False, False), "layer_norm+bias": (False, True), "rms_norm": (True, False)}


def make_inputs(shape, dtype, kind, fused, weight_dtype=None, delta_dtype=None, device=DEVICE):
    """Seeded random leaves: rows with a non-zero mean (so centring matters), weight, bias."""
    rms, has_bias = KINDS[kind]
    C = shape[-1]
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype).requires_grad_()
    delta = torch.randn(shape, device=device).to(delta_dtype or dtype).requires_grad_() if fused else None
    w = (1 + 0.5 * torch.randn(C, device=device)).to(weight_dtype or dtype).requires_grad_()
    b = torch.randn(C, device=device).to(weight_dtype or dtype).requires_grad_() if has_bias else None
    return x, delta, w, b


def run_triton(x, delta, w, b, rms, eps, dy, ds):
    """(s, y, dx, ddelta, dw, db) from the Triton kernels; s, ddelta None unless fused."""
    if delta is None:
        y, s = (ln.rms_norm(x, w, eps) if rms else ln.layer_norm(x, w, b, eps)), None
        y.backward(dy)
    else:
        s, y = ln.add_rms_norm(x, delta, w, eps) if rms else ln.add_layer_norm(x, delta, w, b, eps)
        torch.autograd.backward([s, y], [ds, dy])
    return s, y, x.grad, None if delta is None else delta.grad, w.grad, None if b is None else b.grad


def run_reference(x, delta, w, b, rms, eps, dy, ds):
    """The same six in float64. s = x + delta is rounded to s's dtype exactly as PyTorch does
    (the kernel normalises that stored s), then the norm and its gradients run in float64."""
    s = (x + delta).detach() if delta is not None else x.detach()
    s64 = s.double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    y = reference.rms_norm(s64, w64, eps) if rms else reference.layer_norm(s64, w64, b64, eps)
    y.backward(dy.double())
    if delta is None:
        return None, y, s64.grad, None, w64.grad, None if b is None else b64.grad
    dx = s64.grad + ds.double()
    return s64, y, dx, dx, w64.grad, None if b is None else b64.grad


NAMES = ("s", "y", "dx", "ddelta", "dw", "db")


def check(shape, dtype, kind, fused, eps=1e-5, **dtypes):
    rms = KINDS[kind][0]
    x, delta, w, b = make_inputs(shape, dtype, kind, fused, **dtypes)
    s_dtype = dtype if delta is None else torch.promote_types(dtype, delta.dtype)
    dy = torch.randn(shape, device=x.device).to(s_dtype)
    ds = torch.randn(shape, device=x.device).to(s_dtype) if fused else None
    got = run_triton(x, delta, w, b, rms, eps, dy, ds)
    want = run_reference(x, delta, w, b, rms, eps, dy, ds)
    expected_dtypes = (s_dtype, s_dtype, x.dtype, None if delta is None else delta.dtype, w.dtype,
                       None if b is None else b.dtype)
    for name, g, wanted, expected_dtype in zip(NAMES, got, want, expected_dtypes):
        assert (g is None) == (wanted is None), name
        if g is None:
            continue
        assert g.dtype == expected_dtype and g.shape == wanted.shape, (name, g.dtype, g.shape)
        try:  # each result within its own dtype's tolerance
            assert_matches(g, wanted)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# 1 row; rows that are not a multiple of the rows per program (16 for narrow C), several row
# tiles per backward program; C = 1, 7, 33, 1001 (not powers of two); 3-d input.
SHAPES = [(1, 7), (300, 7), (37, 33), (2, 3, 1001), (5, 1)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, kind, fused):
    # One channel: RMSNorm's dx = w dy eps / (x^2 + eps)^1.5 comes out as the difference of two
    # nearly equal fp32 terms (as in any fp32 kernel); with eps = 1e-5 only ~3 digits survive,
    # so those rows use a larger eps.
    check(shape, dtype, kind, fused, eps=1e-5 if shape[-1] > 1 else 0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_residual_stream(kind):
    """The model under bf16 autocast: x (the residual stream) fp32, delta bf16, weight fp32:
    s and y fp32, dx fp32, ddelta bf16; plus a non-default eps."""
    check((3, 45), torch.float32, kind, fused=True, eps=1e-3, delta_dtype=torch.bfloat16)


@pytest.mark.parametrize("kind", KINDS)
def test_half_input_fp32_weight(kind):
    """bf16 activations with fp32 parameters: y and dx bf16, dw and db fp32, and a bf16 x with
    an fp32 delta (s is fp32; dx back in bf16)."""
    check((9, 40), torch.bfloat16, kind, fused=False, weight_dtype=torch.float32)
    check((9, 40), torch.bfloat16, kind, fused=True, weight_dtype=torch.float32, delta_dtype=torch.float32)


def test_strided_rows_and_expanded_grad():
    """Rows with a stride larger than C, leading dims in a permuted order, and the stride-0
    gradient that y.sum().backward() hands the op."""
    C = 33
    base = torch.randn(4, 6, 50, device=DEVICE)
    for x in (base[..., :C], base[..., :C].transpose(0, 1)):
        x = x.detach().requires_grad_()
        w = torch.randn(C, device=DEVICE, requires_grad=True)
        b = torch.randn(C, device=DEVICE, requires_grad=True)
        y = ln.layer_norm(x, w, b)
        y.sum().backward()
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        y64 = reference.layer_norm(x64, w64, b64)
        y64.sum().backward()
        assert_matches([y, x.grad, w.grad, b.grad], [y64, x64.grad, w64.grad, b64.grad])


def test_weight_grads_are_deterministic():
    """The two-pass dw/db reduction has no atomics: the same inputs give the same bits."""
    x, delta, w, b = make_inputs((301, 20), torch.float32, "layer_norm+bias", fused=True)
    dy = torch.randn(301, 20, device=DEVICE)
    grads = []
    for _ in range(2):
        _, y = ln.add_layer_norm(x, delta, w, b)
        grads.append(torch.autograd.grad(y, (w, b), dy))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_op_registration():
    """Schema, fake (meta) implementation and autograd registration of both ops."""
    x, delta, w, b = make_inputs((5, 33), torch.float32, "layer_norm+bias", fused=True)
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if DEVICE == "cuda":  # the interpreter cannot run on fake tensors, so AOT tracing is GPU only
        utils.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.mini_llm.triton_layer_norm_fwd, (x, delta, w, b, 1e-5, False),
                          test_utils=utils)
    s, _, mean, rstd = torch.ops.mini_llm.triton_layer_norm_fwd(x, delta, w, b, 1e-5, False)
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.mini_llm.triton_layer_norm_bwd,
                          (dy, dy, s.detach(), w.detach(), mean, rstd, False, torch.float32,
                           torch.bfloat16, torch.float32), test_utils=utils)


def _bad_inputs():
    """(call, message): each must raise KernelInputError with that message before any launch."""
    def r(*shape):
        return torch.randn(*shape, device=DEVICE)

    x, w, wide = r(4, 8), r(8), TRITON_NORM_MAX_COLS + 1
    return [
        (lambda: ln.layer_norm(x.int(), w), "layer_norm (triton): x has dtype torch.int32"),
        (lambda: ln.rms_norm(x, w.double()), "rms_norm (triton): weight has dtype torch.float64"),
        (lambda: ln.layer_norm(x, r(7)), "weight must have shape (8,) to match x (4, 8), got (7,)"),
        (lambda: ln.layer_norm(x, w, r(8, 1)), "bias must have shape (8,)"),
        (lambda: ln.add_rms_norm(x, x[:3], w), "add_rms_norm (triton): delta (3, 8) must have the shape of x (4, 8)"),
        (lambda: ln.layer_norm(r(8, 4).t(), w), "x must be contiguous in its last dim"),
        (lambda: ln.add_layer_norm(x, r(8, 4).t(), w), "delta must be contiguous in its last dim"),
        (lambda: ln.layer_norm(r(4, 0), r(0)), "C >= 1"),
        (lambda: ln.rms_norm(torch.tensor(1.0, device=DEVICE), w), "C >= 1"),
        (lambda: ln.layer_norm(r(1, wide), r(wide)), f"{wide} channels are wider than this kernel's limit"),
        (lambda: ln.add_layer_norm(x, x, w.to("meta")), "weight is on meta"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise(case):
    call, message = _bad_inputs()[case]
    with pytest.raises(KernelInputError, match=re.escape(message)):
        call()


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors are valid only in the interpreter")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read by the check at call time
    with pytest.raises(KernelInputError, match=r"layer_norm \(triton\): inputs must be CUDA tensors"):
        ln.layer_norm(torch.randn(2, 8), torch.randn(8))


GPU_SHAPES = [(1, 8192), (16384, 8192), (4097, 1000), (2048, 768), (3, 16384), (65, 4096), (7, 65536)]


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_grid(shape, dtype, kind, fused):
    check(shape, dtype, kind, fused, device="cuda")


@pytest.mark.gpu
def test_gpu_autocast_and_compile():
    """torch.compile traces through the triton_op (forward and backward) and agrees with eager."""
    x, delta, w, b = make_inputs((64, 3, 384), torch.float32, "layer_norm+bias", fused=True,
                                 delta_dtype=torch.bfloat16, device="cuda")

    def block(x, delta, w, b):
        s, y = ln.add_layer_norm(x, delta, w, b)
        return (s.float().square().mean() + y.float().sin().mean()), ln.rms_norm(y, w)

    eager = block(x, delta, w, b)
    eager_grads = torch.autograd.grad(eager[0] + eager[1].sum(), (x, delta, w, b))
    compiled = torch.compile(block, fullgraph=True)(x, delta, w, b)
    compiled_grads = torch.autograd.grad(compiled[0] + compiled[1].sum(), (x, delta, w, b))
    assert_matches([*compiled, *compiled_grads], [*eager, *eager_grads])
