"""FlashAttention-2 in plain PyTorch (mini_llm/ops/flash_reference.py) against the materialised
reference: the output, the saved logsumexp and dq, dk, dv, in float64 so that any difference is
the algorithm's, not rounding; causal (bottom-right aligned, Tq < Tk as in prefill and decode)
and not; lengths the tiles do and do not divide; and the backward as a function of the saved
lse alone.   Run: python -m pytest -q tests/test_flash_reference.py
"""

import math

import pytest
import torch

from attention_inputs import reference_lse
from mini_llm.errors import KernelInputError
from mini_llm.ops import flash_reference as flash
from mini_llm.ops import reference


def make_qkv(B, nh, t_q, t_k, hs, dtype=torch.float64):
    """Seeded random q, k, v; q and k scaled up so the softmax is peaked, not nearly uniform,
    and the online softmax's running max really moves from tile to tile."""
    q = torch.randn(B, nh, t_q, hs, dtype=dtype) * 1.5
    k = torch.randn(B, nh, t_k, hs, dtype=dtype) * 1.5
    v = torch.randn(B, nh, t_k, hs, dtype=dtype)
    return q, k, v


def reference_grads(q, k, v, causal, do, scale=None):
    """(o, dq, dk, dv) of reference.attention in float64."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    o = reference.attention(q, k, v, causal, scale)
    return (o.detach(), *torch.autograd.grad(o, (q, k, v), do.double()))


# (B, nh, Tq, Tk, hs, causal, block_m, block_n)
CASES = [
    (2, 2, 37, 37, 32, True, 16, 16),   # training: 3 tiles a side, the last cut short
    (1, 2, 37, 37, 64, False, 16, 16),
    (1, 1, 37, 37, 64, True, 16, 8),    # query and key tiles of different sizes
    (1, 1, 37, 37, 32, True, 8, 16),
    (1, 2, 32, 32, 32, True, 16, 16),   # tiles divide the lengths
    (1, 1, 32, 48, 64, True, 16, 8),    # prefill: queries are the last 32 of 48 keys
    (2, 1, 13, 37, 32, True, 16, 16),   # offset Tk - Tq = 24, not a multiple of a tile
    (1, 2, 13, 37, 64, False, 8, 16),
    (2, 2, 1, 37, 32, True, 16, 16),    # one-token decode
    (1, 1, 1, 1, 64, True, 16, 16),     # a single token
    (1, 1, 37, 20, 32, False, 16, 8),   # more queries than keys
    (1, 1, 37, 37, 32, True, 64, 64),   # one tile larger than the whole sequence
]


@pytest.mark.parametrize("B,nh,t_q,t_k,hs,causal,block_m,block_n", CASES)
def test_output_lse_and_gradients_match_reference(B, nh, t_q, t_k, hs, causal, block_m, block_n):
    q, k, v = (x.requires_grad_() for x in make_qkv(B, nh, t_q, t_k, hs))
    o, lse = flash.attention_forward(q.detach(), k.detach(), v.detach(), causal,
                                     block_m=block_m, block_n=block_n)
    do = torch.randn_like(o)
    got_grads = torch.autograd.grad(flash.attention(q, k, v, causal, None, block_m, block_n),
                                    (q, k, v), do)
    want_o, *want_grads = reference_grads(q, k, v, causal, do)

    torch.testing.assert_close(o, want_o)
    torch.testing.assert_close(lse, reference_lse(q, k, causal, 1 / math.sqrt(hs)))
    for name, got, want in zip(("dq", "dk", "dv"), got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")


def test_custom_scale():
    q, k, v = (x.requires_grad_() for x in make_qkv(1, 2, 21, 30, 32))
    o = flash.attention(q, k, v, True, 0.3, 8, 8)
    do = torch.randn_like(o)
    want_o, *want_grads = reference_grads(q, k, v, True, do, scale=0.3)
    torch.testing.assert_close(o, want_o)
    for got, want in zip(torch.autograd.grad(o, (q, k, v), do), want_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("causal", [True, False])
def test_backward_needs_only_the_saved_lse(causal):
    """attention_backward called directly on the reference's o and logsumexp, with no forward
    of its own, gives the reference's gradients; and an lse raised by c scales every
    probability, so every gradient, by exp(-c): the backward takes P from lse, not from a
    softmax of its own."""
    q, k, v = make_qkv(1, 2, 29, 41, 32)
    do = torch.randn(1, 2, 29, 32, dtype=torch.float64)
    o, *want_grads = reference_grads(q, k, v, causal, do)
    lse = reference_lse(q, k, causal, 1 / math.sqrt(32))

    got_grads = flash.attention_backward(q, k, v, o, lse, do, causal, block_m=16, block_n=8)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want)
    shifted = flash.attention_backward(q, k, v, o, lse + 0.5, do, causal, block_m=16, block_n=8)
    for got, want in zip(shifted, want_grads, strict=True):
        torch.testing.assert_close(got, want * math.exp(-0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(dtype):
    """bf16/fp32 in: o and the gradients come back in that dtype, lse in float32, each within
    the dtype's rounding of the float64 reference."""
    q, k, v = (x.to(dtype).requires_grad_() for x in make_qkv(1, 2, 37, 37, 64))
    o, lse = flash.attention_forward(q.detach(), k.detach(), v.detach(), True)
    assert o.dtype == dtype and lse.dtype == torch.float32
    out = flash.attention(q, k, v, True)
    do = torch.randn_like(out)
    got = [out, *torch.autograd.grad(out, (q, k, v), do)]
    want = reference_grads(q, k, v, True, do)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert (g.double() - w).norm() <= tol * w.norm()


def test_causal_needs_no_more_queries_than_keys():
    q, k, v = make_qkv(1, 1, 5, 4, 32)
    with pytest.raises(KernelInputError, match="Tq <= Tk"):
        flash.attention_forward(q, k, v, causal=True)
