"""Which keys each query may see: the one rule the reference and torch backends share (the
Triton and CUDA kernels apply it inside their tiles)."""

import torch


def causal_mask(t_q, t_k, device=None):
    """(t_q, t_k) bool, True where query i may see key j.

    The queries are the *last* t_q positions of the t_k keys (bottom-right alignment), so
    the same rule covers training (t_q == t_k), prefill and one-token decode against a cache.
    """
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def cache_mask(cache_lens, t_q, t_max):
    """(B, t_q, t_max) bool for decode attention: the t_q new queries of sequence b are the last
    of its cache_lens[b] filled positions, and each sees the keys up to its own position."""
    device = cache_lens.device
    query_pos = cache_lens.long()[:, None] - t_q + torch.arange(t_q, device=device)  # (B, Tq)
    return torch.arange(t_max, device=device) <= query_pos[:, :, None]
