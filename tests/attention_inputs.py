"""Shared by the Triton and the CUDA attention tests: decode inputs whose cache is NaN past
each sequence's length, the float64 decode reference that reads such a cache, and the float64
logsumexp the attention forwards save for their backward."""

import torch

from kernel_check import DEVICE
from mini_llm.ops import reference
from mini_llm.ops.masks import causal_mask


def decode_inputs(B, nh, nkv, t_q, t_max, hs, lens, dtype, device=DEVICE, strided_q=False):
    """q, k_cache, v_cache, cache_lens; the cache past each sequence's length is NaN (as an
    unwritten cache may be): a kernel that reads it, even only to mask it, turns NaN."""
    if strided_q:  # (B, Tq, nh, hs) as the model lays it out, viewed as (B, nh, Tq, hs)
        q = torch.randn(B, t_q, nh, hs, device=device).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(B, nh, t_q, hs, device=device).to(dtype)
    k, v = (torch.randn(B, nkv, t_max, hs, device=device).to(dtype) for _ in range(2))
    cache_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    unwritten = torch.arange(t_max, device=device) >= cache_lens[:, None].long()  # (B, Tmax)
    for cache in (k, v):
        cache.masked_fill_(unwritten[:, None, :, None], float("nan"))
    return q, k, v, cache_lens


def decode_reference(q, k, v, cache_lens, scale=None):
    """The decode reference in float64; it reads the whole cache, so the NaN past the lengths
    is zeroed first (those keys are masked out anyway)."""
    k, v = (torch.nan_to_num(t.double()) for t in (k, v))
    return reference.decode_attention(q.double(), k, v, cache_lens, scale)


def reference_lse(q, k, causal, scale):
    """log sum_j exp(scale * q.k_j) over the keys each query sees, in float64."""
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    if causal:
        visible = causal_mask(q.size(-2), k.size(-2), q.device)
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(scores, dim=-1)
