"""The Triton FlashAttention-2 kernels (kernels/attention.py, kernels/attention_bwd.py) against
the float64 reference: the output and dq, dk, dv, causal (bottom-right aligned, Tq < Tk as in
prefill and decode) and not, head dims 32/64/128, fp32/bf16/fp16, lengths that are not a multiple
of the block, strided q/k/v views; the saved logsumexp and the backward's contract with it;
every output element written; input checks; the torch.library ops. On CPU the kernels run in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); the `gpu` tests add the grid
up to T = 4096 and torch.compile.   Run: python -m pytest -q tests/test_triton_attention.py
"""

import math

import pytest
import torch

from attention_inputs import reference_lse
from kernel_check import DEVICE, assert_matches, poisoned
from mini_llm.errors import KernelInputError
from mini_llm.ops import reference

fa = pytest.importorskip("mini_llm.kernels.attention")

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def make_qkv(B, nh, t_q, t_k, hs, dtype, device=DEVICE):
    """Seeded random q (B, nh, Tq, hs), k and v (B, nh, Tk, hs), leaves that want gradients.
    q and k are scaled up a little so the softmax is peaked, not nearly uniform."""
    q = (torch.randn(B, nh, t_q, hs, device=device) * 1.5).to(dtype).requires_grad_()
    k = (torch.randn(B, nh, t_k, hs, device=device) * 1.5).to(dtype).requires_grad_()
    v = torch.randn(B, nh, t_k, hs, device=device).to(dtype).requires_grad_()
    return q, k, v


def triton_and_reference(q, k, v, causal, scale=None):
    """([o, dq, dk, dv] from the Triton kernels, the same four from the float64 reference), for
    one random output gradient."""
    o = fa.attention(q, k, v, causal, scale)
    do = torch.randn(o.shape, device=o.device).to(o.dtype)
    got = [o, *torch.autograd.grad(o, (q, k, v), do)]
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = reference.attention(q64, k64, v64, causal, scale)
    want = [o64, *torch.autograd.grad(o64, (q64, k64, v64), do.double())]
    return got, want


def assert_all_match(got, want, names=("o", "dq", "dk", "dv")):
    for name, g, w in zip(names, got, want, strict=True):
        try:  # each within its own dtype's tolerance
            assert_matches(g, w)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


# (B, nh, Tq, Tk, hs, dtype, causal): lengths 1, 17, 70 against interpreter tiles of 16 and 32,
# so there are full blocks, diagonal blocks and blocks cut by Tq or Tk.
CASES = [
    (1, 2, 70, 70, 64, F32, True),     # training: several blocks on and off the diagonal
    (2, 1, 70, 70, 32, BF16, True),
    (1, 1, 17, 70, 128, F16, True),    # prefill against a cache: queries are the last 17
    (2, 2, 1, 70, 64, BF16, True),     # one-token decode
    (1, 1, 33, 48, 32, F32, True),     # offset Tk - Tq = 15, not a multiple of any block
    (1, 2, 70, 17, 32, F32, False),    # more queries than keys
    (2, 1, 17, 17, 128, BF16, False),
    (1, 1, 70, 70, 128, F32, False),
    (1, 2, 17, 70, 64, F16, False),
]


@pytest.mark.parametrize("B,nh,t_q,t_k,hs,dtype,causal", CASES)
def test_output_and_gradients_match_reference(B, nh, t_q, t_k, hs, dtype, causal):
    got, want = triton_and_reference(*make_qkv(B, nh, t_q, t_k, hs, dtype), causal)
    assert got[0].is_contiguous() and got[0].dtype == dtype
    assert_all_match(got, want)


@pytest.mark.parametrize("scale", [0.3, -0.2])
def test_custom_scale(scale):
    """A scale other than 1/sqrt(hs); a negative one flips which score is each row's maximum
    (the forward then runs on -q: the kernel takes the row max of the unscaled scores)."""
    got, want = triton_and_reference(*make_qkv(1, 1, 17, 40, 64, F32), True, scale=scale)
    assert_all_match(got, want)


@pytest.mark.parametrize("dtype,causal", [(F32, True), (BF16, False)])
def test_strided_views_as_the_model_passes_them(dtype, causal):
    """q, k, v split from one (B, T, 3C) projection and viewed as (B, nh, T, hs): no copy, row
    stride 3C, head stride hs; the kernels read them in place."""
    B, T, nh, hs = 2, 23, 2, 32
    qkv = torch.randn(B, T, 3 * nh * hs, device=DEVICE).to(dtype).requires_grad_()
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
    assert not q.is_contiguous() and q.stride(-1) == 1
    got, want = triton_and_reference(q, k, v, causal)
    assert got[0].is_contiguous()
    assert_all_match(got, want)


@pytest.mark.parametrize("causal", [True, False])
def test_one_key_gives_its_value(causal):
    """Tq = Tk = 1: the softmax is exactly 1, so o = v, dv = do, and q, k get no gradient."""
    q, k, v = make_qkv(2, 2, 1, 1, 32, F32)
    o = fa.attention(q, k, v, causal)
    do = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    assert_matches(o, v.detach().double())
    assert_matches(dv, do.double())
    assert dq.abs().max() < 1e-6 and dk.abs().max() < 1e-6


def test_no_queries():
    q, k, v = make_qkv(1, 2, 0, 5, 32, F32)
    o = fa.attention(q, k, v, causal=False)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
    assert o.shape == (1, 2, 0, 32) and dq.shape == q.shape
    assert not dk.any() and not dv.any()


@pytest.mark.parametrize("dtype,causal", [(F32, True), (BF16, True), (F16, False)])
def test_saved_lse_is_the_natural_log_logsumexp(dtype, causal):
    q, k, v = make_qkv(2, 2, 17, 70, 32, dtype)
    o, lse = fa.attention_forward(q, k, v, causal)
    assert lse.dtype == torch.float32 and lse.shape == (2, 2, 17) and lse.is_contiguous()
    assert_matches(lse, reference_lse(q, k, causal, 1 / math.sqrt(32)))


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_backward_takes_any_forward_that_saves_this_lse(dtype):
    """The contract the CUDA forward relies on: attention_backward needs only o and lse, here
    computed by the reference, not by the Triton forward."""
    q, k, v = make_qkv(1, 2, 40, 70, 64, dtype)
    scale = 0.2
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = reference.attention(q64, k64, v64, True, scale)
    do = torch.randn(o64.shape, device=DEVICE).to(dtype)
    want = torch.autograd.grad(o64, (q64, k64, v64), do.double())
    lse = reference_lse(q, k, True, scale).float()
    got = fa.attention_backward(q.detach(), k.detach(), v.detach(), o64.detach().to(dtype), lse, do,
                                True, scale)
    assert [g.dtype for g in got] == [dtype] * 3
    assert_all_match([o64.to(dtype), *got], [o64, *want])


def test_gradient_of_a_sum_with_stride_0():
    """o.sum() sends back an expanded gradient (all strides 0): the backward copies it."""
    q, k, v = make_qkv(1, 1, 17, 17, 32, F32)
    fa.attention(q, k, v).sum().backward()
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    reference.attention(q64, k64, v64).sum().backward()
    assert_all_match([q.grad, k.grad, v.grad], [q64.grad, k64.grad, v64.grad], ("dq", "dk", "dv"))


def test_every_output_element_is_written(monkeypatch):
    """Every buffer the launchers allocate (o, lse, delta, dq, dk, dv) starts as NaN: an element
    a kernel forgets to write fails the comparison."""
    real_empty = torch.empty

    def nan_empty(*size, dtype=None, device=None, **kwargs):
        if kwargs:
            return real_empty(*size, dtype=dtype, device=device, **kwargs)
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        return poisoned(shape, dtype or torch.get_default_dtype(), device or "cpu")

    monkeypatch.setattr(torch, "empty", nan_empty)
    q, k, v = make_qkv(1, 2, 33, 70, 32, F32)
    got, want = triton_and_reference(q, k, v, causal=True)
    assert_all_match(got, want)
    assert torch.isfinite(fa.attention_forward(q, k, v, True)[1]).all()


def valid_qkv(hs=32, t_q=8, t_k=8):
    return [torch.randn(1, 2, t, hs, device=DEVICE) for t in (t_q, t_k, t_k)]


def wider(t, hs):
    """t with head dim hs, its channels repeated."""
    return t.repeat(1, 1, 1, 4)[..., :hs]


BAD_INPUTS = {  # name -> (q, k, v made from valid ones, causal, message)
    "float64": (lambda q, k, v: (q.double(), k.double(), v.double()), True,
                "has dtype torch.float64"),
    "mixed dtypes": (lambda q, k, v: (q, k.half(), v.half()), True, "must share a dtype"),
    "rank 3": (lambda q, k, v: (q[0], k[0], v[0]), True, "must have 4 dimensions"),
    "batch": (lambda q, k, v: (torch.cat([q, q]), k, v), True, "disagree on batch, heads"),
    "heads": (lambda q, k, v: (q, k[:, :1], v[:, :1]), True, "disagree on batch, heads"),
    "head dim 48": (lambda q, k, v: (wider(q, 48), wider(k, 48), wider(v, 48)), True,
                    "head dim 48 is not supported"),
    "last stride 2": (lambda q, k, v: (wider(q, 64)[..., ::2], k, v), True, "stride 1 in its last"),
    "k, v lengths": (lambda q, k, v: (q, k, v[:, :, :4]), True, "differ in shape"),
    "causal Tq > Tk": (lambda q, k, v: (q, k[:, :, :4], v[:, :, :4]), True, "needs Tq <= Tk"),
    "no keys": (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), False, "no positions"),
    "device": (lambda q, k, v: (q, k.to("meta"), v), True, "k is on meta"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_inputs_are_refused_before_launch(name):
    make, causal, message = BAD_INPUTS[name]
    with pytest.raises(KernelInputError, match=message):
        fa.attention(*make(*valid_qkv()), causal)


@pytest.mark.parametrize("scale", [math.inf, math.nan])
def test_scale_must_be_finite(scale):
    with pytest.raises(KernelInputError, match="scale must be finite"):
        fa.attention(*valid_qkv(), True, scale)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelInputError, match="must be CUDA tensors"):
        fa.attention(*[t.cpu() for t in valid_qkv()])


@pytest.mark.parametrize("change,message", [
    (dict(lse=lambda lse: lse.double()), "lse must be float32"),
    (dict(lse=lambda lse: lse[:, :, :4]), "lse must be float32 of shape"),
    (dict(do=lambda do: do[:, :, :4]), "do must match q"),
    (dict(o=lambda o: o.half()), "o must match q"),
])
def test_backward_checks_its_inputs(change, message):
    q, k, v = valid_qkv()
    args = dict(o=torch.randn_like(q), lse=torch.randn(1, 2, 8, device=DEVICE),
                do=torch.randn_like(q))
    args.update({name: fix(args[name]) for name, fix in change.items()})
    with pytest.raises(KernelInputError, match=message):
        fa.attention_backward(q, k, v, args["o"], args["lse"], args["do"], True)


def test_ops_are_registered_with_fake_and_autograd():
    q, k, v = make_qkv(1, 2, 17, 20, 32, F32)
    scale = 1 / math.sqrt(32)
    torch.library.opcheck(torch.ops.mini_llm.triton_attention_fwd.default, (q, k, v, True, scale),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))
    q, k, v = (x.detach() for x in (q, k, v))
    o, lse = fa.attention_forward(q, k, v, True)
    torch.library.opcheck(torch.ops.mini_llm.triton_attention_bwd.default,
                          (q, k, v, o, lse, torch.randn_like(o), True, scale),
                          test_utils=("test_schema", "test_faketensor"))


# -- GPU: the full grid, long sequences, torch.compile --


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("hs", [32, 64, 128])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t_q,t_k", [(1, 1), (1, 4096), (127, 1000), (1000, 1000), (4096, 4096)])
def test_grid_on_gpu(t_q, t_k, causal, hs, dtype):
    got, want = triton_and_reference(*make_qkv(1, 2, t_q, t_k, hs, dtype, device="cuda"), causal)
    names = ("o", "dq", "dk", "dv")
    if t_k == 1:  # a single key: the reference gradients of q and k are exactly 0
        got, want, names = [got[0], got[3]], [want[0], want[3]], ("o", "dv")
    assert_all_match(got, want, names)


@pytest.mark.gpu
def test_strided_batch_on_gpu():
    B, T, nh, hs = 3, 1000, 4, 64
    qkv = torch.randn(B, T, 3 * nh * hs, device="cuda").to(BF16).requires_grad_()
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
    assert_all_match(*triton_and_reference(q, k, v, True))


@pytest.mark.gpu
def test_torch_compile_on_gpu():
    q, k, v = make_qkv(2, 4, 300, 300, 64, BF16, device="cuda")
    compiled = torch.compile(fa.attention, fullgraph=True)
    o = compiled(q, k, v, True)
    do = torch.randn_like(o)
    got = [o, *torch.autograd.grad(o, (q, k, v), do)]
    o_eager = fa.attention(q, k, v, True)
    want = [o_eager, *torch.autograd.grad(o_eager, (q, k, v), do)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
