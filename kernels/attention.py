"""FlashAttention-2 in Triton: softmax(scale * Q K^T + causal mask) V without the (Tq, Tk)
score matrix, forward here, backward in kernels/attention_bwd.py.

The forward (_attention_fwd_kernel): one program per (query block of BLOCK_M rows, batch *
head). It keeps its Q tile, an fp32 output accumulator and two numbers per row on chip, and
streams the key/value blocks through them with the online softmax: for each block of scores
S = Q K_j^T, the running row max m grows to m', the running sum l and the accumulator are
rescaled by exp(m - m'), and exp(S - m') V_j is added. At the end O = acc / l, and the
logsumexp lse = m + log(l) is saved for the backward. Scores are kept in base 2: scale * log2(e)
is folded into one fused multiply-add per score, and exp2 is the GPU's native exponential.
Tiles (BLOCK_M x BLOCK_N, warps, pipeline stages) are autotuned per head dim and dtype, for
each causal flag and power-of-two length bucket.

Causal masking is bottom-right aligned (query i sits at key position i + Tk - Tq, so decode
and prefill against a cache use the same rule). Key blocks right of the diagonal are never
loaded; blocks left of it run without a mask; only the blocks on the diagonal and a block cut
by Tk pay for the mask. bf16/fp16 run on the tensor cores with fp32 accumulation; fp32 takes
exact fp32 products (slower) so it matches the fp32 reference at ~1e-5.

Public: attention(q, k, v, causal=True, scale=None) (differentiable, op
mini_llm::triton_attention_fwd with its backward mini_llm::triton_attention_bwd),
attention_forward(...) -> (o, lse), attention_backward(...) -> (dq, dk, dv): the CUDA backend's
functions, ops and autograd wiring too (mini_llm/ops/kernel_autograd.py).
Test: pytest -q tests/test_triton_attention.py (interpreted on CPU; -m gpu on a GPU).
Bench (GPU): python -m mini_llm.kernels.attention [float16]  (TFLOP/s vs PyTorch's flash SDPA).
"""

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from mini_llm.ops.checks import check_attention, softmax_scale
from mini_llm.ops.kernel_autograd import attention_fwd_outputs, register_attention_autograd

from .attention_bwd import (SIZES_NOT_SPECIALIZED, attention_backward, autotuned, blocks_grid,
                            key_split, load_rows, program_block, seq_bucket, store_rows, strides3)
from .common import LOG2E, dot_precision, mma

LN2 = tl.constexpr(math.log(2.0))
FWD_OP = "attention (triton)"  # how input errors name the op


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, rows, lo, hi, t_k, kv_offset,
               qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold the key blocks [lo, hi) into the running (acc, l_i, m_i) of the query tile q.
    MASKED: some keys lie past Tk or right of the causal diagonal."""
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(K, keys, stride_kn, t_k, MASKED, HEAD_DIM)
        qk = mma(q, tl.trans(k), None, DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if MASKED:
            visible = keys[None, :] < t_k
            if CAUSAL:
                visible = visible & (keys[None, :] <= rows[:, None] + kv_offset)
            qk = tl.where(visible, qk, float("-inf"))
        # Scaling the row max instead of every score (qk_scale > 0) leaves one fused multiply-add
        # per score below. Every row sees key 0, and block 0 comes first: m_new is finite.
        m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)  # in log2 units
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was summed against the old max
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = load_rows(V, keys, stride_vn, t_k, MASKED, HEAD_DIM)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=SIZES_NOT_SPECIALIZED)
def _attention_fwd_kernel(Q, K, V, O, LSE,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          n_heads, t_q, t_k, qk_scale, SEQ_BUCKET,
                          HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # grid: (cdiv(Tq, BLOCK_M), B * nh), the last query blocks (most keys, causal) first so the
    # long programs start early and the short ones fill the tail.
    # O: (B, nh, Tq, HEAD_DIM) contiguous; LSE: (B, nh, Tq) fp32
    pid_bh, b, h, start_m, rows = program_block(n_heads, BLOCK_M, True)
    q = load_rows(Q + b * stride_qb + h * stride_qh, rows, stride_qm, t_q, True, HEAD_DIM)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh

    # Keys [0, full) are seen by every row of the block: no mask. Keys [full, hi) by some rows;
    # keys right of the causal diagonal of the block's last row are never loaded.
    kv_offset, full, hi = key_split(start_m, t_q, t_k, CAUSAL, BLOCK_M, BLOCK_N)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, rows, 0, full, t_k,
                               kv_offset, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, rows, full, hi, t_k,
                               kv_offset, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)

    store_rows(O, pid_bh, rows, t_q, acc / l_i[:, None], HEAD_DIM)
    # natural-log logsumexp of scale * q.k: (m + log2 l) is in base 2
    lse = (m_i + tl.math.log2(l_i)) * LN2
    tl.store(LSE + pid_bh.to(tl.int64) * t_q + rows, lse, mask=rows < t_q)


# Candidate tiles per head dim, (BLOCK_M, BLOCK_N, num_warps, num_stages), for bf16/fp16: from
# the Triton fused-attention tutorial's search space (BLOCK_M 64/128, BLOCK_N 32..128, 4 or 8
# warps, 2..4 stages), keeping those that compile for sm_90 without register spills (Triton 3.9,
# ptxas; hs 128 needs 8 warps for a 128-row tile) and fit an A100's shared memory too (a few
# spill 4-36 bytes under 3.6 or 3.9: `python -m mini_llm.bench.triton_aot_check --only attn`).
# fp32 (products on the CUDA cores): small tiles; at hs 128 even the 8-warp 32 x 32 one spills
# (0.5-5 KB): exact fp32 attention is the slow path.
FWD_KERNELS = autotuned(
    _attention_fwd_kernel,
    tiles={32: [(128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 4)],
           64: [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3), (128, 64, 8, 3),
                (64, 64, 4, 4)],
           128: [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 32, 8, 3),
                 (64, 64, 4, 4)]},
    fp32_tiles=[(32, 32, 4, 2), (32, 32, 8, 2), (16, 32, 8, 2), (32, 16, 8, 2)],
    interpreted_tile=(32, 16))


@triton_op("mini_llm::triton_attention_fwd", mutates_args=())
def _attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    B, nh, t_q, t_k, hs = check_attention(FWD_OP, q, k, v, causal)
    o, lse = attention_fwd_outputs(q)
    if o.numel() == 0:
        return o, lse
    if scale < 0:  # the kernel takes the row max of the unscaled scores: negate q instead
        q, scale = -q, -scale
    precision = dot_precision(q.dtype)
    wrap_triton(FWD_KERNELS[precision, hs])[blocks_grid(t_q, "BLOCK_M", B * nh)](
        q, k, v, o, lse, *strides3(q), *strides3(k), *strides3(v),
        nh, t_q, t_k, scale * LOG2E, seq_bucket(t_q, t_k),
        HEAD_DIM=hs, CAUSAL=causal, DOT_PRECISION=precision)
    return o, lse


@_attention_fwd.register_fake
def _(q, k, v, causal, scale):
    return attention_fwd_outputs(q)


register_attention_autograd(_attention_fwd, torch.ops.mini_llm.triton_attention_bwd)


def attention_forward(q, k, v, causal=True, scale=None):
    """(o, lse): the output (B, nh, Tq, hs), contiguous in q's dtype, and the float32 (B, nh, Tq)
    natural-log logsumexp of the visible scale * q.k that attention_backward takes."""
    # Checked here too, before the dispatcher picks an implementation by device (a meta
    # tensor among the inputs would route the call to the fake one).
    check_attention(FWD_OP, q, k, v, causal)
    return torch.ops.mini_llm.triton_attention_fwd(q, k, v, causal, softmax_scale(FWD_OP, q.size(-1), scale))


def attention(q, k, v, causal=True, scale=None):
    """softmax(q k^T * scale + mask) v, as mini_llm.ops.reference.attention: q (B, nh, Tq, hs),
    k and v (B, nh, Tk, hs), head dim 32, 64 or 128, any lengths; causal is bottom-right
    aligned. Inputs may be views whose last dim has stride 1. Differentiable."""
    return attention_forward(q, k, v, causal, scale)[0]


# -- benchmark (GPU): TFLOP/s against PyTorch's flash SDPA, like the Triton attention tutorial --


def _bench(dtype_name="bfloat16"):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype, batch_tokens, width = getattr(torch, dtype_name), 16384, 2048  # B * T and nh * hs fixed
    print(f"{torch.cuda.get_device_name()}, {dtype_name}, B * T = {batch_tokens}, "
          f"nh * hs = {width}; TFLOP/s (the first call of each shape autotunes)")
    print(f"{'hs':>4} {'causal':>6} {'T':>6} {'pass':>8} {'triton':>8} {'sdpa':>8} {'ratio':>6}")
    for hs in (64, 128):
        for causal in (True, False):
            for t in (1024, 2048, 4096, 8192, 16384):
                B, nh = max(batch_tokens // t, 1), width // hs
                q, k, v = (torch.randn(B, nh, t, hs, device="cuda", dtype=dtype, requires_grad=True)
                           for _ in range(3))
                do = torch.randn_like(q)
                flops = 4 * B * nh * t * t * hs * (0.5 if causal else 1.0)  # Q K^T and P V
                # the backward: twice the forward's matmuls, plus recomputing Q K^T
                for pass_, work in (("fwd", 1.0), ("fwd+bwd", 3.5)):
                    ms = []
                    for fn in (attention, lambda q, k, v, causal: F.scaled_dot_product_attention(
                            q, k, v, is_causal=causal)):
                        if pass_ == "fwd":
                            def step(fn=fn):
                                with torch.no_grad():
                                    fn(q, k, v, causal)
                        else:
                            def step(fn=fn):
                                fn(q, k, v, causal).backward(do)
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            ms.append(triton.testing.do_bench(step, grad_to_none=[q, k, v]))
                    tflops = [flops * work / t_ms * 1e-9 for t_ms in ms]
                    print(f"{hs:>4} {causal!s:>6} {t:>6} {pass_:>8} {tflops[0]:>8.1f} "
                          f"{tflops[1]:>8.1f} {ms[1] / ms[0]:>6.2f}", flush=True)


if __name__ == "__main__":
    import sys

    _bench(*sys.argv[1:2])  # optional dtype: bfloat16 (default) or float16
