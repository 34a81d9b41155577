"""FlashAttention-2 in plain PyTorch: the reading between the reference and the Triton kernels.

reference.attention builds the whole (Tq, Tk) score matrix, softmaxes it and multiplies by V:
clear, but it reads and writes Tq * Tk numbers per head. kernels/attention.py and
kernels/attention_bwd.py never hold that matrix. This file is their algorithm (Dao,
"FlashAttention-2", 2023, Algorithms 1 and 2) with Python loops over the tiles and plain
tensor ops, so a learner can check it line by line against both sides:

  forward   for each query tile Q_i, stream the key/value tiles K_j, V_j through an online
            softmax (running row max m_i, running sum l_i, an accumulator rescaled whenever the
            max grows); save O and, per query row, the logsumexp lse = m_i + log(l_i).
  backward  rebuild each probability tile exactly from lse, P = exp(S - lse), and turn the
            output gradient dO into dQ, dK, dV one tile at a time.

Names follow the kernels (q, k, v, o, lse, delta, m_i, l_i, acc, rows, keys, start_m, start_n,
kv_offset); the paper's symbols are in brackets. What the kernels add on top: the tiles of the
outer loop run in parallel, one program each; scores are kept in base 2 (exp2 is the GPU's
native exponential, scale * log2(e) folded into one multiply); the last tile of a ragged
length is padded and masked where here a slice is simply shorter; tiles wholly visible skip the
mask test (here too: only tiles that cross the causal diagonal build a mask).

Causal masking is bottom-right aligned as in ops.attention: query i sits at key position
i + Tk - Tq, so decode and prefill against a cache use the same rule.

Not a backend of the ops registry: the Python loops make it slow, and the registry's backends
are the reference, PyTorch's built-ins and the two kernel languages. It is a reading, checked
against reference.attention by tests/test_flash_reference.py. Inputs of any float dtype;
sums run in float32 (float64 stays float64), outputs come back in q's dtype.

Public: attention(q, k, v, causal=True, scale=None, block_m, block_n) (differentiable),
attention_forward(...) -> (o, lse), attention_backward(q, k, v, o, lse, do, ...) -> (dq, dk, dv).
"""

import math

import torch

from .checks import fail
from .reference import widen

OP = "flash reference attention"  # how input errors name it
BLOCK_M = 16  # query rows per tile [B_r in the paper]
BLOCK_N = 16  # keys per tile [B_c]


def attention_forward(q, k, v, causal=True, scale=None, block_m=BLOCK_M, block_n=BLOCK_N):
    """(o, lse): o (B, nh, Tq, hs) in q's dtype, and lse (B, nh, Tq), the natural-log logsumexp
    of each query's visible scores scale * q.k, in float32 (float64 for float64 inputs).
    q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs)."""
    B, nh, t_q, hs = q.shape
    t_k = k.size(2)
    if causal and t_q > t_k:
        fail(OP, f"causal attention needs Tq <= Tk (the queries are the last Tq of the Tk "
                 f"positions), got Tq = {t_q}, Tk = {t_k}")
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    out_dtype = q.dtype
    q, k, v = widen(q), widen(k), widen(v)
    o = torch.empty_like(q)  # (B, nh, Tq, hs)
    lse = torch.empty(B, nh, t_q, dtype=q.dtype, device=q.device)  # [L]
    kv_offset = t_k - t_q  # query row i sees keys j <= i + kv_offset (causal)

    # Outer loop: one query tile at a time (in the kernel, one program per tile, in parallel).
    for start_m in range(0, t_q, block_m):
        end_m = min(start_m + block_m, t_q)
        rows = torch.arange(start_m, end_m, device=q.device)
        q_i = q[:, :, start_m:end_m]  # (B, nh, BLOCK_M, hs)  [Q_i]
        m_i = torch.full((B, nh, end_m - start_m), float("-inf"), dtype=q.dtype, device=q.device)
        l_i = torch.zeros_like(m_i)  # (B, nh, BLOCK_M): sum of exp(s - m_i) so far  [l_i]
        acc = torch.zeros_like(q_i)  # (B, nh, BLOCK_M, hs): O unnormalised  [O~_i]
        # Causal: the tile's last row sees keys up to end_m - 1 + kv_offset; key tiles right
        # of that are never visited.
        hi = min(t_k, end_m + kv_offset) if causal else t_k

        # Inner loop: stream the key/value tiles through the online softmax.
        for start_n in range(0, hi, block_n):
            end_n = min(start_n + block_n, t_k)
            keys = torch.arange(start_n, end_n, device=q.device)
            k_j, v_j = k[:, :, start_n:end_n], v[:, :, start_n:end_n]  # (B, nh, BLOCK_N, hs)
            s = (q_i @ k_j.transpose(-2, -1)) * scale  # (B, nh, BLOCK_M, BLOCK_N)  [S_ij]
            if causal and end_n - 1 > start_m + kv_offset:  # the tile crosses the diagonal
                s = s.masked_fill(keys[None, :] > rows[:, None] + kv_offset, float("-inf"))
            # Every row sees key 0 and tile 0 comes first, so m_new is finite from here on.
            m_new = torch.maximum(m_i, s.amax(dim=-1))  # (B, nh, BLOCK_M)  [m_i^(j)]
            p = torch.exp(s - m_new[..., None])  # (B, nh, BLOCK_M, BLOCK_N)  [P~_ij]
            # What was summed against the old max is rescaled to the new one: exp(x - m) *
            # exp(m - m_new) == exp(x - m_new). alpha is 1 when the max did not move.
            alpha = torch.exp(m_i - m_new)  # [exp(m_i^(j-1) - m_i^(j))]
            l_i = l_i * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ v_j  # (B, nh, BLOCK_M, hs)
            m_i = m_new

        # Normalise once at the end [O_i = diag(l_i)^-1 O~_i], and save the logsumexp
        # [L_i = m_i + log(l_i)]: Tq numbers per head, all the backward needs of the softmax.
        o[:, :, start_m:end_m] = acc / l_i[..., None]
        lse[:, :, start_m:end_m] = m_i + torch.log(l_i)
    return o.to(out_dtype), lse


def attention_backward(q, k, v, o, lse, do, causal=True, scale=None, block_m=BLOCK_M,
                       block_n=BLOCK_N):
    """(dq, dk, dv) of attention(q, k, v, causal, scale) in q's dtype, given its output o, the
    lse that attention_forward saved, and the output's gradient do. It reads the softmax only
    through lse: no score matrix, no max or sum is recomputed over a whole row."""
    t_q, hs = q.shape[-2:]
    t_k = k.size(2)
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    out_dtype = q.dtype
    q, k, v, o, do = (widen(t) for t in (q, k, v, o, do))
    lse = lse.to(q.dtype)
    # delta_i = sum_j P_ij dP_ij, the term the softmax's gradient subtracts; since
    # dP_ij = dO_i . v_j and sum_j P_ij v_j = O_i, it is rowsum(dO * O): one pass, no P needed.
    delta = (do * o).sum(dim=-1)  # (B, nh, Tq)  [D_i = rowsum(dO_i * O_i)]
    dq = torch.zeros_like(q)  # (B, nh, Tq, hs)
    dk, dv = torch.empty_like(k), torch.empty_like(v)  # (B, nh, Tk, hs)
    kv_offset = t_k - t_q

    # Outer loop over key tiles, as FA-2 does: dK_j and dV_j sum over every query, so each stays
    # in its tile's accumulator (on chip, in the kernel) and is written once; dQ_i sums over
    # keys and is accumulated across the outer loop instead (in the paper by atomic adds to
    # memory; kernels/attention_bwd.py avoids atomics with a second pass, the loops swapped).
    for start_n in range(0, t_k, block_n):
        end_n = min(start_n + block_n, t_k)
        keys = torch.arange(start_n, end_n, device=q.device)
        k_j, v_j = k[:, :, start_n:end_n], v[:, :, start_n:end_n]  # (B, nh, BLOCK_N, hs)
        dk_j, dv_j = torch.zeros_like(k_j), torch.zeros_like(v_j)  # [dK_j, dV_j]
        # Causal: row i sees this tile's first key from row start_n - kv_offset on; query
        # tiles wholly before that are skipped (the kernel's `lo`).
        lo = max(start_n - kv_offset, 0) // block_m * block_m if causal else 0

        for start_m in range(lo, t_q, block_m):
            end_m = min(start_m + block_m, t_q)
            rows = torch.arange(start_m, end_m, device=q.device)
            q_i, do_i = q[:, :, start_m:end_m], do[:, :, start_m:end_m]  # (B, nh, BLOCK_M, hs)
            s = (q_i @ k_j.transpose(-2, -1)) * scale  # (B, nh, BLOCK_M, BLOCK_N)  [S_ij]
            if causal and end_n - 1 > start_m + kv_offset:
                s = s.masked_fill(keys[None, :] > rows[:, None] + kv_offset, float("-inf"))
            # The forward's probabilities, exactly: exp(s - lse) == exp(s - m) / l.
            p = torch.exp(s - lse[:, :, start_m:end_m, None])  # [P_ij = exp(S_ij - L_i)]
            dv_j += p.transpose(-2, -1) @ do_i  # [dV_j += P_ij^T dO_i]
            dp = do_i @ v_j.transpose(-2, -1)  # (B, nh, BLOCK_M, BLOCK_N)  [dP_ij = dO_i V_j^T]
            ds = p * (dp - delta[:, :, start_m:end_m, None])  # [dS_ij = P_ij * (dP_ij - D_i)]
            # S = scale * Q K^T, so the scale comes back in both products.
            dq[:, :, start_m:end_m] += (ds @ k_j) * scale  # [dQ_i += dS_ij K_j]
            dk_j += (ds.transpose(-2, -1) @ q_i) * scale  # [dK_j += dS_ij^T Q_i]

        dk[:, :, start_n:end_n] = dk_j
        dv[:, :, start_n:end_n] = dv_j
    return dq.to(out_dtype), dk.to(out_dtype), dv.to(out_dtype)


class _FlashAttention(torch.autograd.Function):
    """Saves q, k, v, o and lse, not the (Tq, Tk) probabilities that autograd would keep for
    reference.attention: the backward recomputes them tile by tile."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):
        o, lse = attention_forward(q, k, v, causal, scale, block_m, block_n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = causal, scale, block_m, block_n
        return o

    @staticmethod
    def backward(ctx, do):
        dq, dk, dv = attention_backward(*ctx.saved_tensors, do, *ctx.args)
        return dq, dk, dv, None, None, None, None  # no gradient for the non-tensor arguments


def attention(q, k, v, causal=True, scale=None, block_m=BLOCK_M, block_n=BLOCK_N):
    """softmax(q k^T * scale + mask) v, as reference.attention, computed tile by tile;
    differentiable. q: (B, nh, Tq, hs), k and v: (B, nh, Tk, hs)."""
    return _FlashAttention.apply(q, k, v, causal, scale, block_m, block_n)
