"""Rotary position embeddings (mini_llm/rope.py), the model's own (no backend has a kernel)."""

import math

import torch

from mini_llm.rope import apply_rope, rope_tables


def test_rope_is_a_complex_rotation():
    B, nh, T, hs = 2, 3, 10, 8
    x = torch.randn(B, nh, T, hs, dtype=torch.float64)
    cos, sin = rope_tables(hs, torch.arange(T))
    ours = apply_rope(x, cos, sin)
    # Pair (x0, x1) as the complex number x0 + i x1 and multiply by e^(i angle).
    angles = torch.arange(T)[:, None] * 10000.0 ** (-torch.arange(0, hs, 2) / hs)
    rotated = torch.view_as_complex(x.reshape(B, nh, T, hs // 2, 2).contiguous()) * torch.polar(
        torch.ones_like(angles, dtype=torch.float64), angles.double())
    torch.testing.assert_close(ours, torch.view_as_real(rotated).flatten(-2), rtol=1e-6, atol=1e-6)
    # A rotation keeps lengths, and q.k depends only on the distance between positions.
    torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(hs, dtype=torch.float64), torch.randn(hs, dtype=torch.float64)
    at = lambda t, p: apply_rope(t.view(1, 1, 1, hs), *rope_tables(hs, torch.tensor([p]))).flatten()
    assert math.isclose(at(q, 7) @ at(k, 3), at(q, 14) @ at(k, 10), rel_tol=1e-5)


def test_position_zero_is_the_identity_and_the_dtype_is_kept():
    x = torch.randn(2, 3, 4, 8, dtype=torch.bfloat16)
    cos, sin = rope_tables(8, torch.zeros(4, dtype=torch.long))
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16 and torch.equal(out, x)
