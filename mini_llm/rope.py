"""Rotary position embeddings (RoPE, Su et al. 2021), the model's alternative to learned
positions: each head's queries and keys are rotated by an angle proportional to their position.

The model's own, not an op of the seam (mini_llm.ops): PyTorch has no built-in RoPE and no
kernel backend fuses one, so a registry entry would hold this same code under every name. The
attention right after it is the op the backends speed up.
"""

import torch


def rope_tables(head_size, positions, base=10000.0):
    """cos and sin tables for rotary position embeddings, each (T, head_size // 2).

    Channel pair i rotates by angle position * base^(-2i / head_size): fast for the first
    pairs, slow for the last, so the dot product q.k depends only on the distance.
    """
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = positions.float()[:, None] * inv_freq[None, :].to(positions.device)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate each channel pair (x[2i], x[2i+1]) of x (B, nh, T, hs) by its angle, in float32
    (float64 if x is) whatever x's dtype, as the ops' reductions are."""
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    x_even, x_odd = x32[..., 0::2], x32[..., 1::2]  # (B, nh, T, hs/2)
    rotated_even = x_even * cos - x_odd * sin
    rotated_odd = x_even * sin + x_odd * cos
    return torch.stack((rotated_even, rotated_odd), dim=-1).flatten(-2).to(x.dtype)
