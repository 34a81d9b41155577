"""The CUDA FlashAttention-2 (csrc/attention_*.cu through mini_llm/ops/cuda/attention.py) against
the float64 reference.

`gpu` tests (skipped without CUDA) run the kernels: forward (out and lse, through the binding
into NaN-poisoned buffers, so an unwritten element fails) and backward (dq, dk, dv through
autograd) over head dims 32 / 64 / 128, causal or not, T in {1, 17, 128, 1000, 4096} (1 token,
lengths that are not a multiple of any tile, several query and key blocks), bf16 / fp16 on the
tensor cores and fp32 on the exact path; Tq != Tk (causal: the queries are the last Tq
positions; non-causal also Tq > Tk); strided and misaligned views; a custom and a negative
scale; Tq = 0; opcheck and torch.compile; the binding's checks on GPU tensors. Unmarked tests:
the wrapper's KernelInputError for CPU tensors, the op registration (fake functions, autograd)
on meta tensors, which views are read in place, and the binding's own errors for CPU tensors
(the `cuda_ext` fixture builds the extension where nvcc is, skips otherwise).

    python -m pytest -q tests/test_cuda_attention.py
"""

import math
import re

import pytest
import torch

from attention_inputs import reference_lse
from kernel_check import assert_matches, poisoned
from mini_llm.errors import KernelInputError
from mini_llm.ops import reference
from mini_llm.ops.cuda import attention as cuda_attention

gpu = pytest.mark.gpu
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIMS = (32, 64, 128)
LENGTHS = (1, 17, 128, 1000, 4096)


def make_qkv(B, nh, t_q, t_k, hs, dtype, device="cuda"):
    q = torch.randn(B, nh, t_q, hs, device=device).to(dtype)
    k, v = (torch.randn(B, nh, t_k, hs, device=device).to(dtype) for _ in range(2))
    return q, k, v


def batch_heads(t_q, t_k):
    """Fewer heads for long sequences: the float64 reference materialises (Tq, Tk) per head."""
    return (1, 2) if t_q * t_k > 1 << 20 else (2, 3)


def run_forward(ext, q, k, v, causal, scale):
    """The binding on NaN-poisoned out and lse."""
    out = poisoned(q.shape, q.dtype, device=q.device)
    lse = poisoned(q.shape[:3], torch.float32, device=q.device)
    ext.attention_forward(q, k, v, out, lse, causal, scale, torch.cuda.current_stream().cuda_stream)
    return out, lse


def check_forward(ext, q, k, v, causal, scale=None):
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    out, lse = run_forward(ext, q, k, v, causal, scale)
    assert_matches(out, reference.attention(q.double(), k.double(), v.double(), causal, scale))
    # lse is float32 from float32 sums of exact products, whatever the input dtype.
    assert_matches(lse, reference_lse(q, k, causal, scale), tol=1e-4)


def check_backward(q, k, v, causal, scale=None):
    """out and the gradients of q, k, v through autograd, against float64 autograd."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    dout = torch.randn(q.shape, device=q.device).to(q.dtype)
    out = cuda_attention.attention(q, k, v, causal, scale)
    out.backward(dout)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = reference.attention(q64, k64, v64, causal, scale)
    want.backward(dout.double())
    if k.size(2) == 1:  # one key: softmax is constantly 1, dq and dk are exactly 0 (ours: rounding)
        for got in (q.grad, k.grad):
            assert got.abs().max() <= 1e-3
        assert_matches([out, v.grad], [want, v64.grad])
    else:
        assert_matches([out, q.grad, k.grad, v.grad], [want, q64.grad, k64.grad, v64.grad])


@gpu
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("hs", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_forward_matches_reference(cuda_ext, dtype, hs, causal, t):
    check_forward(cuda_ext, *make_qkv(*batch_heads(t, t), t, t, hs, dtype), causal)


@gpu
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("hs", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_backward_matches_reference(dtype, hs, causal, t):
    check_backward(*make_qkv(*batch_heads(t, t), t, t, hs, dtype), causal)


@gpu
@pytest.mark.parametrize("t", [1, 17, 130, 1000])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("hs", HEAD_DIMS)
def test_float32_forward_and_backward(cuda_ext, hs, causal, t):
    q, k, v = make_qkv(*batch_heads(t, t), t, t, hs, torch.float32)
    check_forward(cuda_ext, q, k, v, causal)
    check_backward(q, k, v, causal)


# (Tq, Tk): a single decode query, prefill chunks against a longer cache, both sides odd.
CROSS_LENGTHS = [(1, 300), (17, 1000), (100, 129), (129, 1000), (255, 4000)]


@gpu
@pytest.mark.parametrize("t_q, t_k", CROSS_LENGTHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("hs", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_tq_differs_from_tk(cuda_ext, dtype, hs, causal, t_q, t_k):
    q, k, v = make_qkv(*batch_heads(t_q, t_k), t_q, t_k, hs, dtype)
    check_forward(cuda_ext, q, k, v, causal)
    check_backward(q, k, v, causal)


@gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_more_queries_than_keys_without_mask(cuda_ext, dtype):
    q, k, v = make_qkv(2, 3, 300, 45, 64, dtype)
    check_forward(cuda_ext, q, k, v, causal=False)
    check_backward(q, k, v, causal=False)


@gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_strided_views(dtype):
    """The model's layout: (B, T, 3, nh, hs) split and transposed to (B, nh, T, hs) views, read in
    place; plus a view starting 2 elements in (not 16-byte aligned), which is copied first."""
    B, T, nh, hs = 2, 300, 4, 64
    qkv = torch.randn(B, T, 3, nh, hs, device="cuda").to(dtype)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous() and cuda_attention._kernel_ready(q) is q
    check_backward(q, k, v, causal=True)
    flat = torch.randn(B * nh * T * hs + 2, device="cuda").to(dtype)
    misaligned = flat[2:].view(B, nh, T, hs)
    assert cuda_attention._kernel_ready(misaligned) is not misaligned
    check_backward(misaligned, k, v, causal=True)


@gpu
@pytest.mark.parametrize("scale", [0.3, -0.2])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_custom_scale(cuda_ext, dtype, scale):
    """A scale other than 1/sqrt(hs); a negative one flips which score is each row's maximum."""
    q, k, v = make_qkv(2, 2, 200, 200, 128, dtype)
    check_forward(cuda_ext, q, k, v, causal=True, scale=scale)
    check_backward(q, k, v, causal=True, scale=scale)


@gpu
def test_empty_queries_give_zero_key_gradients():
    q, k, v = make_qkv(2, 3, 0, 50, 64, torch.bfloat16)
    k.requires_grad_(), v.requires_grad_()
    out = cuda_attention.attention(q, k, v, causal=True)
    assert out.shape == (2, 3, 0, 64)
    out.sum().backward()
    assert torch.equal(k.grad, torch.zeros_like(k)) and torch.equal(v.grad, torch.zeros_like(v))


@gpu
def test_upstream_gradient_of_a_sum():
    """out.sum() hands the backward a stride-0 gradient: it must be copied, not misread."""
    q, k, v = (t.requires_grad_() for t in make_qkv(1, 2, 70, 70, 32, torch.float16))
    cuda_attention.attention(q, k, v).sum().backward()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    reference.attention(q64, k64, v64).sum().backward()
    assert_matches([q.grad, k.grad, v.grad], [q64.grad, k64.grad, v64.grad])


@gpu
def test_custom_ops_pass_opcheck():
    """torch.library's own checks: schema, fake (meta) functions, autograd registration."""
    q, k, v = make_qkv(1, 2, 40, 50, 64, torch.bfloat16)
    torch.library.opcheck(torch.ops.mini_llm.cuda_attention_fwd.default, (q, k, v, True, 0.125))
    out, lse = torch.ops.mini_llm.cuda_attention_fwd(q, k, v, True, 0.125)
    torch.library.opcheck(torch.ops.mini_llm.cuda_attention_bwd.default,
                          (q, k, v, out, lse, torch.randn_like(out), True, 0.125))


@gpu
def test_under_torch_compile():
    q, k, v = (t.requires_grad_() for t in make_qkv(2, 4, 257, 257, 64, torch.bfloat16))
    compiled = torch.compile(cuda_attention.attention)
    out = compiled(q, k, v, True, None)
    out.backward(torch.ones_like(out))
    eager_q, eager_k, eager_v = (t.detach().requires_grad_() for t in (q, k, v))
    eager = cuda_attention.attention(eager_q, eager_k, eager_v, True, None)
    eager.backward(torch.ones_like(eager))
    for got, want in ((out, eager), (q.grad, eager_q.grad), (k.grad, eager_k.grad), (v.grad, eager_v.grad)):
        assert torch.equal(got, want)


@gpu
def test_binding_rejects_bad_gpu_inputs(cuda_ext):
    q, k, v = make_qkv(1, 2, 16, 16, 64, torch.float16)
    out, lse = torch.empty_like(q), torch.empty(1, 2, 16, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream

    def forward(q=q, k=k, v=v, out=out, lse=lse, causal=True):
        cuda_ext.attention_forward(q, k, v, out, lse, causal, 0.125, stream)

    cases = [
        (dict(q=q[..., :48].contiguous(), k=k[..., :48].contiguous(), v=v[..., :48].contiguous(),
              out=out[..., :48].contiguous()), "head dim 48 is not supported"),
        (dict(k=k.float()), "q, k, v must share a dtype"),
        (dict(q=q[0]), "must be 4-D"),
        (dict(v=v[:, :, :8]), "differ in shape"),
        (dict(q=torch.cat([q, q], dim=2), out=torch.cat([out, out], dim=2), lse=torch.cat([lse, lse], dim=2)),
         "causal attention needs Tq <= Tk"),
        (dict(out=out[:, :, :8]), "out must have shape"),
        (dict(lse=lse.half()), "lse must be Float"),
        (dict(q=q.transpose(2, 3).contiguous().transpose(2, 3)), "stride 1 in its last (head) dim"),
        (dict(k=torch.randn(2 * 16 * 64 + 2, device="cuda").half()[2:].view(1, 2, 16, 64)), "16-byte aligned"),
        (dict(out=out.transpose(2, 3).contiguous().transpose(2, 3)), "out must be contiguous"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            forward(**kwargs)
    dq = torch.empty_like(q)
    with pytest.raises(RuntimeError, match="dout must match q"):
        cuda_ext.attention_backward(q, k, v, out, lse, out[:, :, :8], dq, dq, dq, True, 0.125, stream)


# -- unmarked: no GPU needed ----------------------------------------------------------------------


def test_wrapper_rejects_cpu_tensors():
    q, k, v = make_qkv(1, 2, 8, 8, 64, torch.float32, device="cpu")
    with pytest.raises(KernelInputError, match=r"attention \(cuda\): inputs must be CUDA tensors, got one on cpu"):
        cuda_attention.attention(q, k, v)


def test_registration_on_meta_tensors():
    """The torch.library wiring without a GPU: the fake functions give the forward's (out, lse)
    and, through autograd into the backward op, gradients shaped like q, k, v."""
    q = torch.empty(2, 3, 17, 64, device="meta", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.empty(2, 3, 40, 64, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out, lse = torch.ops.mini_llm.cuda_attention_fwd(q, k, v, True, 0.125)
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == (q.shape, q.dtype, (2, 3, 17), torch.float32)
    assert out.requires_grad and not lse.requires_grad
    out.backward(torch.empty_like(out))
    assert [(t.grad.shape, t.grad.dtype) for t in (q, k, v)] == [(t.shape, t.dtype) for t in (q, k, v)]


def test_kernel_ready_copies_only_what_the_kernels_cannot_read():
    qkv = torch.randn(2, 50, 3, 4, 64).to(torch.bfloat16)  # the model's (B, T, 3, nh, hs)
    q = qkv[:, :, 1].transpose(1, 2)
    assert cuda_attention._kernel_ready(q) is q
    misaligned = torch.randn(2 * 4 * 50 * 64 + 2).to(torch.bfloat16)[2:].view(2, 4, 50, 64)
    expanded = torch.randn(1, 1, 1, 1).expand(2, 3, 5, 64)  # e.g. the gradient of a .sum()
    for t in (misaligned, expanded, q.transpose(2, 3)):
        ready = cuda_attention._kernel_ready(t)
        assert ready.is_contiguous() and ready.storage_offset() == 0 and torch.equal(ready, t)


def test_binding_rejects_cpu_tensors(cuda_ext):
    q, k, v = make_qkv(1, 2, 8, 8, 64, torch.bfloat16, device="cpu")
    out, lse = torch.empty_like(q), torch.empty(1, 2, 8)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor, got one on cpu"):
        cuda_ext.attention_forward(q, k, v, out, lse, True, 0.125, 0)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor, got one on cpu"):
        cuda_ext.attention_backward(q, k, v, out, lse, out, q, k, v, True, 0.125, 0)
