"""Each from-scratch reference op against PyTorch's built-in, forward and backward, and the
registry that selects between backends."""

import pytest
import torch
import torch.nn.functional as F

from mini_llm import ops
from mini_llm.errors import KernelSelectionError
from mini_llm.ops import reference as ref
from mini_llm.ops.masks import causal_mask


def check(fn_ours, fn_torch, *inputs, tol=1e-10):
    """Outputs and input gradients agree (float64, random upstream gradient)."""
    a = [x.detach().double().requires_grad_(x.is_floating_point()) for x in inputs]
    b = [x.detach().double().requires_grad_(x.is_floating_point()) for x in inputs]
    out_a, out_b = fn_ours(*a), fn_torch(*b)
    assert out_a.shape == out_b.shape
    torch.testing.assert_close(out_a, out_b, rtol=tol, atol=tol)
    grad_out = torch.randn_like(out_a)
    out_a.backward(grad_out)
    out_b.backward(grad_out)
    for x, y in zip(a, b):
        if x.requires_grad:
            torch.testing.assert_close(x.grad, y.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 129)])
def test_softmax(shape):
    x = torch.randn(shape) * 10  # large logits: the max subtraction must keep it finite
    check(ref.softmax, lambda t: torch.softmax(t, -1), x)
    assert torch.isfinite(ref.softmax(torch.tensor([1000.0, -1000.0, 0.0]))).all()


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(with_bias):
    C = 37
    x, w, b = torch.randn(4, 5, C) * 3 + 1, torch.randn(C), torch.randn(C)
    check(lambda x, w, b: ref.layer_norm(x, w, b if with_bias else None),
          lambda x, w, b: F.layer_norm(x, (C,), w, b if with_bias else None), x, w, b)


def test_rms_norm():
    C = 33
    x, w = torch.randn(3, 4, C), torch.randn(C)
    check(lambda x, w: ref.rms_norm(x, w, 1e-5), lambda x, w: F.rms_norm(x, (C,), w, 1e-5), x, w)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t_q,t_k", [(13, 13), (1, 9), (4, 11)])
def test_attention(causal, t_q, t_k):
    B, nh, hs = 2, 3, 16
    q, k, v = torch.randn(B, nh, t_q, hs), torch.randn(B, nh, t_k, hs), torch.randn(B, nh, t_k, hs)

    def sdpa_bottom_right(q, k, v):
        mask = torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q) if causal else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    check(lambda q, k, v: ref.attention(q, k, v, causal), sdpa_bottom_right, q, k, v)
    check(lambda q, k, v: ops.torch_ops.attention(q, k, v, causal), sdpa_bottom_right, q, k, v)


def test_causal_mask_is_bottom_right():
    # 2 queries that are the last of 4 positions: query 0 is position 2, sees keys 0..2.
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_gelu_and_silu():
    x = torch.randn(5, 41) * 4
    check(ref.gelu, F.gelu, x)
    check(ref.silu, F.silu, x)


def test_cross_entropy_with_ignored_targets():
    logits, targets = torch.randn(3, 7, 11) * 5, torch.randint(0, 11, (3, 7))
    targets[0, :3] = -1
    check(lambda lg: ref.cross_entropy(lg, targets),
          lambda lg: F.cross_entropy(lg.reshape(-1, 11), targets.reshape(-1), ignore_index=-1),
          logits)


def test_low_precision_inputs_reduce_in_float32():
    x, w = torch.randn(4, 256, dtype=torch.bfloat16), torch.randn(256, dtype=torch.bfloat16)
    out = ref.layer_norm(x, w)
    assert out.dtype == torch.bfloat16
    expected = F.layer_norm(x.float(), (256,), w.float())
    assert ((out.float() - expected).norm() / expected.norm()) < 1e-2


# ---- the registry -------------------------------------------------------------------------

def test_backends_are_switched_by_the_context_manager(monkeypatch):
    calls = []
    monkeypatch.setitem(ops.registry._impls["gelu"], "reference", lambda x: calls.append(1) or x)
    x = torch.randn(3)
    with ops.use_kernels("gelu=reference") as choice:
        assert choice["gelu"] == "reference" and choice["attention"] == "torch"
        ops.gelu(x)
    assert calls == [1]
    ops.gelu(x)
    assert calls == [1] and ops.selection()["gelu"] == "torch"


def test_bare_backend_applies_to_every_op():
    with ops.use_kernels("reference") as choice:
        assert set(choice.values()) == {"reference"}
    assert ops.parse("reference,attention=torch")["attention"] == "torch"
    assert set(ops.parse("auto").values()) == {"torch"}  # nothing faster runs on a CPU


@pytest.mark.parametrize("spec,message", [
    ("attention=nope", "unknown backend 'nope'"),
    ("nope", "unknown backend 'nope'"),
    ("attn=torch", "unknown op 'attn'; ops: add_layer_norm, add_rms_norm, attention"),
    ("cuda", "backend 'cuda' cannot run here: no CUDA GPU"),
])
def test_bad_selections_say_what_exists(spec, message):
    with pytest.raises(KernelSelectionError, match=message.replace("(", r"\(")):
        ops.set_kernels(spec)


def test_unimplemented_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton can run here, but gelu has no kernel
    with pytest.raises(KernelSelectionError, match="op 'gelu' has no 'triton' implementation; it has: reference, torch"):
        ops.set_kernels("gelu=triton")


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("MINI_LLM_KERNELS", "layer_norm=reference")
    assert ops.set_kernels(None)["layer_norm"] == "reference"
    monkeypatch.setenv("MINI_LLM_KERNELS", "bogus")
    with pytest.raises(KernelSelectionError, match="MINI_LLM_KERNELS: unknown backend 'bogus'"):
        ops.set_kernels(None)
