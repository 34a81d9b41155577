"""The `torch` backend: PyTorch's own fused ops, the baseline a user would otherwise pick.

Same signatures and semantics as reference.py; every kernel is benchmarked against these.
"""

import torch
import torch.nn.functional as F

from .masks import cache_mask, causal_mask
from .quant_format import dequantize


def layer_norm(x, weight, bias=None, eps=1e-5):
    return F.layer_norm(x, (x.size(-1),), weight, bias, eps)


def rms_norm(x, weight, eps=1e-5):
    return F.rms_norm(x, (x.size(-1),), weight, eps)


def add_layer_norm(x, delta, weight, bias=None, eps=1e-5):
    s = x + delta
    return s, layer_norm(s, weight, bias, eps)


def add_rms_norm(x, delta, weight, eps=1e-5):
    s = x + delta
    return s, rms_norm(s, weight, eps)


def attention(q, k, v, causal=True, scale=None):
    t_q, t_k = q.size(-2), k.size(-2)
    # SDPA's is_causal aligns the mask top-left; ours is bottom-right (queries are the last
    # positions). They agree when t_q == t_k; one query may see every key; otherwise pass
    # the mask explicitly.
    if not causal or t_q == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if t_q == t_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = causal_mask(t_q, t_k, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def decode_attention(q, k_cache, v_cache, cache_lens, scale=None, longest=None):
    """SDPA over the whole cache with a mask per sequence (its flash backend takes no mask, so
    this is what PyTorch offers for a batch of different cache lengths)."""
    visible = cache_mask(cache_lens, q.size(2), k_cache.size(2))  # (B, Tq, Tmax)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible[:, None], scale=scale,
                                          enable_gqa=k_cache.size(1) != q.size(1))


def gelu(x):
    return F.gelu(x)


def silu(x):
    return F.silu(x)


def cross_entropy(logits, targets, ignore_index=-1):
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index
    )


def quant_matmul(x, qweight, scales, group_size):
    """Dequantize the whole weight into x's dtype, then one torch.matmul: what a user without a
    fused kernel writes (the full-precision weight goes through memory on every call)."""
    return torch.matmul(x, dequantize(qweight, scales, group_size).to(x.dtype).T)
