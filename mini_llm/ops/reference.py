"""Reference ops: the specification of every op, written from scratch for clarity.

Each function uses only elementary tensor arithmetic (matmul, exp, log, sum, max, erf, ...),
never the fused PyTorch op of the same name; tests/test_ops.py checks each one against that
built-in. Triton and CUDA kernels are checked against these. Speed is not a goal here.

Shapes: B batch, T sequence, C channels, nh heads, hs head size, V vocabulary.
Reductions run in at least float32 (bf16/fp16 inputs are widened), as the fast kernels do.
"""

import math

import torch

from .masks import cache_mask, causal_mask
from .quant_format import dequantize


def widen(x):
    """x in float32, or float64 if it already is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def softmax(x, dim=-1):
    x32 = widen(x)
    # exp(x - max) == exp(x) / exp(max): same result, but exp never overflows.
    e = torch.exp(x32 - x32.amax(dim=dim, keepdim=True))
    return (e / e.sum(dim=dim, keepdim=True)).to(x.dtype)


def layer_norm(x, weight, bias=None, eps=1e-5):
    """Normalise each row over the last dim to mean 0, variance 1, then scale and shift."""
    x32 = widen(x)
    mean = x32.mean(dim=-1, keepdim=True)
    var = ((x32 - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as in the paper
    y = (x32 - mean) / torch.sqrt(var + eps) * widen(weight)
    if bias is not None:
        y = y + widen(bias)
    return y.to(x.dtype)


def rms_norm(x, weight, eps=1e-5):
    """LayerNorm without centring or bias: divide each row by its root mean square."""
    x32 = widen(x)
    rms = torch.sqrt((x32 * x32).mean(dim=-1, keepdim=True) + eps)
    return (x32 / rms * widen(weight)).to(x.dtype)


def add_layer_norm(x, delta, weight, bias=None, eps=1e-5):
    """The residual add fused with the next norm: (s, layer_norm(s)) with s = x + delta."""
    s = x + delta
    return s, layer_norm(s, weight, bias, eps)


def add_rms_norm(x, delta, weight, eps=1e-5):
    """(s, rms_norm(s)) with s = x + delta."""
    s = x + delta
    return s, rms_norm(s, weight, eps)


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale + mask) v.   q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs).

    This materialises the (Tq, Tk) score matrix; the flash kernels never do.
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (widen(q) @ widen(k).transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    if causal:
        mask = causal_mask(q.size(-2), k.size(-2), device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    return (softmax(scores, dim=-1) @ widen(v)).to(q.dtype)  # (B, nh, Tq, hs)


def decode_attention(q, k_cache, v_cache, cache_lens, scale=None, longest=None):
    """Attention of a few new queries per sequence against a KV cache (generation).

    q: (B, nh, Tq, hs); k_cache, v_cache: (B, nkv, Tmax, hs); cache_lens: (B,) ints, how many
    positions of each sequence's cache are filled, the Tq new ones included (they are its last
    Tq). Query i of sequence b sits at position cache_lens[b] - Tq + i and sees the keys up to
    it. Grouped-query attention: query head h reads key/value head h // (nh // nkv).
    longest: the longest of cache_lens if the caller knows it; kernels use it to skip reading
    the lengths back (the reference has no use for it).
    """
    _, nh, t_q, hs = q.shape
    group = nh // k_cache.size(1)
    k = k_cache.repeat_interleave(group, dim=1)  # (B, nh, Tmax, hs)
    v = v_cache.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    scores = (widen(q) @ widen(k).transpose(-2, -1)) * scale  # (B, nh, Tq, Tmax)
    visible = cache_mask(cache_lens, t_q, k_cache.size(2))  # (B, Tq, Tmax)
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return (softmax(scores, dim=-1) @ widen(v)).to(q.dtype)  # (B, nh, Tq, hs)


def gelu(x):
    """The exact GELU, x * Phi(x) with Phi the standard normal CDF (GPT-2 used a tanh fit)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x):
    """x * sigmoid(x), the gate of SwiGLU."""
    return x / (1.0 + torch.exp(-x))


def cross_entropy(logits, targets, ignore_index=-1):
    """Mean of -log softmax(logits)[target] over positions whose target != ignore_index.

    logits: (..., V), targets: (...). log softmax = x - logsumexp(x), computed stably.
    """
    logits = widen(logits.reshape(-1, logits.size(-1)))
    targets = targets.reshape(-1)
    m = logits.amax(dim=-1, keepdim=True)
    logsumexp = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(dim=-1))
    keep = targets != ignore_index
    picked = logits[keep].gather(1, targets[keep].unsqueeze(1)).squeeze(1)
    return (logsumexp[keep] - picked).mean()


def quant_matmul(x, qweight, scales, group_size):
    """x (..., K) @ W.T -> (..., N), W (N, K) stored quantized (quant_format.py: int8 per
    output channel, or int4 in groups of group_size along K): each weight is q * its group's
    scale. Dequantizes the whole weight, then multiplies in float32 or wider; x's dtype out."""
    x_wide = widen(x)
    w = dequantize(qweight, scales, group_size).to(x_wide.dtype)  # (N, K)
    return (x_wide @ w.T).to(x.dtype)
