"""FlashAttention-2 backward in Triton, and the helpers both passes share
(tuning, tile loads and stores, the causal key split).

The forward (kernels/attention.py) saved, per query row, the natural-log logsumexp of its
visible scores, lse = log(sum_j exp(scale * q.k_j)). With it the backward rebuilds each
probability tile exactly, P = exp(scale * Q K^T - lse), one tile at a time, and never holds
the (Tq, Tk) matrix. With dO the gradient of the output O = P V:

    dV = P^T dO        dP = dO V^T        dS = P * (dP - delta),  delta = rowsum(dO * O)
    dQ = scale * dS K                     dK = scale * dS^T Q

Three kernels, no atomics, so the result is the same bit for bit on every run:
  _delta_kernel   delta = rowsum(dO * O) per query row (fp32), one pass over O and dO;
  _dkdv_kernel    one program per key block: holds K, V and the dK, dV accumulators on chip
                  and walks the query blocks that see it;
  _dq_kernel      one program per query block: holds Q, dO and the dQ accumulator and walks
                  the key blocks it sees (the forward's loop, run again).
Causal masking is bottom-right aligned (query i sits at key position i + Tk - Tq); blocks that
no query of the tile sees are skipped, fully visible blocks run without a mask, and only the
blocks on the diagonal and the ragged ends (Tq, Tk not a multiple of the block) pay for one.

Public: attention_backward(q, k, v, o, lse, do, causal, scale) -> (dq, dk, dv), also as the
op torch.ops.mini_llm.triton_attention_bwd. The CUDA backend's ops have the same schemas
(mini_llm/ops/kernel_autograd.py), so the lse convention above is the contract of both.
Test: pytest -q tests/test_triton_attention.py (interpreted on CPU);
bench: python -m mini_llm.kernels.attention.
"""


import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from mini_llm.ops.checks import check_attention_backward, softmax_scale
from mini_llm.ops.kernel_autograd import attention_bwd_outputs

from .common import INTERPRETED, LOG2E, dot_precision, mma

from .autotune import autotune

# -- shared by the forward and the backward --

LOG2E_JIT = tl.constexpr(LOG2E)  # readable inside kernels (their globals are constexpr)
# Sizes that change per call, not per compiled kernel: Triton would otherwise compile one
# variant for a length of 1 and one for lengths divisible by 16.
SIZES_NOT_SPECIALIZED = ["n_heads", "t_q", "t_k", "SEQ_BUCKET"]


def seq_bucket(t_q, t_k):
    """Autotuning key for the sequence length: the best tile changes with the length only
    by powers of two, so one tuning run serves every length in a bucket."""
    return min(max(triton.next_power_of_2(max(t_q, t_k)), 256), 16384)


def autotuned(kernel, tiles, fp32_tiles, interpreted_tile):
    """{(dot precision, head dim): `kernel` autotuned over its candidate tiles, rows of
    (BLOCK_M, BLOCK_N, num_warps, num_stages)}: "tf32" (bf16/fp16 on the tensor cores) over
    tiles[head dim], "ieee" (fp32 products on the CUDA cores) over fp32_tiles. Each kernel is
    tuned per causal flag and length bucket (Triton adds the dtypes to the key). Under the
    interpreter a single small tile, since every config would be run in Python."""
    def tuned(rows):
        rows = [(*interpreted_tile, 1, 1)] if INTERPRETED else rows
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                   for m, n, w, s in rows]
        return autotune(configs, key=["CAUSAL", "SEQ_BUCKET"])(kernel)

    kernels = {("tf32", hs): tuned(rows) for hs, rows in tiles.items()}
    kernels.update({("ieee", hs): tuned(fp32_tiles) for hs in tiles})
    return kernels


@triton.jit
def program_block(n_heads, BLOCK: tl.constexpr, LAST_FIRST: tl.constexpr):
    """(pid_bh, b, h, start, idx) of this program under the grid (cdiv(T, BLOCK), B * nh):
    its (batch, head) pid_bh = b * nh + h (b, h in int64 for the offsets) and its block of
    rows idx = start + arange(BLOCK). LAST_FIRST: block 0 runs last, so with a causal mask the
    long programs (the last query blocks see the most keys) start early, the short fill the tail."""
    if LAST_FIRST:
        pid = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = (pid_bh // n_heads).to(tl.int64), (pid_bh % n_heads).to(tl.int64)
    start = pid * BLOCK
    return pid_bh, b, h, start, start + tl.arange(0, BLOCK)


@triton.jit
def load_rows(X, idx, stride, n, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Rows idx of the (n, HEAD_DIM) matrix at X (row stride `stride`, unit column stride), as a
    (len(idx), HEAD_DIM) tile. MASKED: some of idx may be >= n; those rows read as zero."""
    ptrs = X + idx[:, None] * stride + tl.arange(0, HEAD_DIM)[None, :]
    if MASKED:
        tile = tl.load(ptrs, mask=idx[:, None] < n, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def store_rows(X, pid_bh, idx, n, tile, HEAD_DIM: tl.constexpr):
    """X[pid_bh, idx, :] = tile in X's dtype for the rows idx < n, X a contiguous
    (B * nh, n, HEAD_DIM) output."""
    cols = tl.arange(0, HEAD_DIM)
    out = pid_bh.to(tl.int64) * n * HEAD_DIM + idx[:, None] * HEAD_DIM + cols[None, :]
    tl.store(X + out, tile.to(X.dtype.element_ty), mask=idx[:, None] < n)


@triton.jit
def key_split(start_m, t_q, t_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """(kv_offset, full, hi) for the query block starting at row start_m: keys [0, full) are
    seen by every row of the block (no mask), keys [full, hi) by some rows; keys past hi by none.
    Causal: row i sees keys j <= i + kv_offset, so the first row sees up to start_m + kv_offset
    and the last up to start_m + BLOCK_M - 1 + kv_offset; keys past that are never loaded."""
    kv_offset = t_k - t_q
    if CAUSAL:
        hi = tl.minimum(t_k, start_m + BLOCK_M + kv_offset)
        full = tl.minimum(start_m + kv_offset + 1, t_k) // BLOCK_N * BLOCK_N
    else:
        hi = t_k
        full = t_k // BLOCK_N * BLOCK_N
    return kv_offset, full, hi


def blocks_grid(length, block, batch_heads):
    """Launch grid of an autotuned kernel: (cdiv(length, its meta[block]), batch_heads)."""
    return lambda meta: (triton.cdiv(length, meta[block]), batch_heads)


# -- backward kernels --


@triton.jit
def _delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_dob, stride_doh, stride_dom,
                  n_heads, t_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    # delta: (B, nh, Tq) fp32, delta_i = sum_d dO_id * O_id (= sum_j P_ij dP_ij)
    pid_bh, b, h, _, rows = program_block(n_heads, BLOCK_M, False)
    o = load_rows(O + b * stride_ob + h * stride_oh, rows, stride_om, t_q, True, HEAD_DIM)
    do = load_rows(DO + b * stride_dob + h * stride_doh, rows, stride_dom, t_q, True, HEAD_DIM)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * t_q + rows, delta, mask=rows < t_q)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom, keys, lo, hi,
                t_q, kv_offset, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate into dk, dv (BLOCK_N, HEAD_DIM) the query blocks [lo, hi). MASKED: some
    rows lie past Tq or some (row, key) pairs are hidden by the causal mask."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = load_rows(Q, rows, stride_qm, t_q, MASKED, HEAD_DIM)
        do = load_rows(DO, rows, stride_dom, t_q, MASKED, HEAD_DIM)
        if MASKED:
            lse = tl.load(LSE + rows, mask=rows < t_q, other=0.0)
            delta = tl.load(DELTA + rows, mask=rows < t_q, other=0.0)
        else:
            lse = tl.load(LSE + rows)
            delta = tl.load(DELTA + rows)
        # Work transposed, (BLOCK_N, BLOCK_M): the key block is the rows of every product.
        s_t = mma(k, tl.trans(q), None, DOT_PRECISION) * qk_scale - (lse * LOG2E_JIT)[None, :]
        if MASKED:
            visible = rows[None, :] < t_q
            if CAUSAL:
                visible = visible & (keys[:, None] <= rows[None, :] + kv_offset)
            s_t = tl.where(visible, s_t, float("-inf"))
        p_t = tl.math.exp2(s_t)
        dv = mma(p_t.to(do.dtype), do, dv, DOT_PRECISION)
        dp_t = mma(v, tl.trans(do), None, DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = mma(ds_t.to(q.dtype), q, dk, DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=SIZES_NOT_SPECIALIZED)
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                 n_heads, t_q, t_k, qk_scale, scale, SEQ_BUCKET,
                 HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # grid: (cdiv(Tk, BLOCK_N), B * nh); DK, DV: (B, nh, Tk, HEAD_DIM) contiguous
    pid_bh, b, h, start_n, keys = program_block(n_heads, BLOCK_N, False)
    k = load_rows(K + b * stride_kb + h * stride_kh, keys, stride_kn, t_k, True, HEAD_DIM)
    v = load_rows(V + b * stride_vb + h * stride_vh, keys, stride_vn, t_k, True, HEAD_DIM)
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    LSE += pid_bh.to(tl.int64) * t_q
    DELTA += pid_bh.to(tl.int64) * t_q

    # Query row i sees key j when j <= i + kv_offset (causal), so this key block is seen from
    # row start_n - kv_offset on, and whole from row start_n + BLOCK_N - 1 - kv_offset on.
    kv_offset = t_k - t_q
    if CAUSAL:
        lo = tl.maximum(start_n - kv_offset, 0) // BLOCK_M * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - kv_offset, 0), BLOCK_M) * BLOCK_M
    else:
        lo = 0
        full_lo = 0
    full_hi = t_q // BLOCK_M * BLOCK_M  # query blocks past it are cut by Tq
    end = tl.cdiv(t_q, BLOCK_M) * BLOCK_M
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # the diagonal blocks, then the fully visible ones, then the block cut by Tq
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom, keys,
                         lo, tl.minimum(full_lo, end), t_q, kv_offset, qk_scale,
                         True, CAUSAL, HEAD_DIM, BLOCK_M, DOT_PRECISION)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom, keys,
                         full_lo, full_hi, t_q, kv_offset, qk_scale,
                         False, CAUSAL, HEAD_DIM, BLOCK_M, DOT_PRECISION)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom, keys,
                         tl.maximum(full_lo, full_hi), end, t_q, kv_offset, qk_scale,
                         True, CAUSAL, HEAD_DIM, BLOCK_M, DOT_PRECISION)

    store_rows(DK, pid_bh, keys, t_k, dk * scale, HEAD_DIM)
    store_rows(DV, pid_bh, keys, t_k, dv, HEAD_DIM)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, rows, lo, hi, t_k, kv_offset,
              qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate into dq (BLOCK_M, HEAD_DIM) the key blocks [lo, hi). MASKED: some keys lie
    past Tk or behind the causal diagonal."""
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(K, keys, stride_kn, t_k, MASKED, HEAD_DIM)
        v = load_rows(V, keys, stride_vn, t_k, MASKED, HEAD_DIM)
        # (BLOCK_M, BLOCK_N), log2 units
        s = mma(q, tl.trans(k), None, DOT_PRECISION) * qk_scale - lse2[:, None]
        if MASKED:
            visible = keys[None, :] < t_k
            if CAUSAL:
                visible = visible & (keys[None, :] <= rows[:, None] + kv_offset)
            s = tl.where(visible, s, float("-inf"))
        p = tl.math.exp2(s)
        dp = mma(do, tl.trans(v), None, DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=SIZES_NOT_SPECIALIZED)
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
               stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
               stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
               n_heads, t_q, t_k, qk_scale, scale, SEQ_BUCKET,
               HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # grid: (cdiv(Tq, BLOCK_M), B * nh), the last query blocks (most keys, causal) first;
    # DQ: (B, nh, Tq, HEAD_DIM) contiguous
    pid_bh, b, h, start_m, rows = program_block(n_heads, BLOCK_M, True)
    q = load_rows(Q + b * stride_qb + h * stride_qh, rows, stride_qm, t_q, True, HEAD_DIM)
    do = load_rows(DO + b * stride_dob + h * stride_doh, rows, stride_dom, t_q, True, HEAD_DIM)
    lse2 = tl.load(LSE + pid_bh.to(tl.int64) * t_q + rows, mask=rows < t_q, other=0.0) * LOG2E_JIT
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * t_q + rows, mask=rows < t_q, other=0.0)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh

    # The forward's split: keys [0, full) are seen by every row of the block, [full, hi) by some.
    kv_offset, full, hi = key_split(start_m, t_q, t_k, CAUSAL, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, rows, 0, full, t_k,
                   kv_offset, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, rows, full, hi, t_k,
                   kv_offset, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)

    store_rows(DQ, pid_bh, rows, t_q, dq * scale, HEAD_DIM)


# -- launcher and op --

BWD_OP = "attention backward (triton)"  # how input errors name the op
DELTA_BLOCK_M = 16 if INTERPRETED else 64
# Candidate tiles per head dim, (BLOCK_M, BLOCK_N, num_warps, num_stages), for bf16/fp16: the
# Triton fused-attention tutorial's choices (dK/dV 32 x 128, dQ 128 x 32, 4 warps, 5 stages) and
# neighbours, keeping those that compile for sm_90 without register spills (Triton 3.9, ptxas;
# hs 128 needs 8 warps). dK/dV: a wide key block and its two fp32 accumulators stay on chip
# while thin query blocks stream past; dQ: the transpose. fp32 (products on the CUDA cores):
# small tiles, which at hs 128 still spill (see bench/triton_aot_check.py): the slow path.
DKDV_KERNELS = autotuned(
    _dkdv_kernel,
    tiles={32: [(32, 128, 4, 5), (64, 128, 8, 3), (32, 64, 4, 4), (16, 128, 4, 4)],
           64: [(32, 128, 8, 4), (64, 128, 8, 3), (64, 128, 8, 4), (32, 64, 4, 4), (16, 128, 4, 4)],
           128: [(32, 128, 8, 3), (64, 64, 8, 3), (32, 64, 8, 4), (32, 64, 4, 4), (16, 64, 4, 4)]},
    fp32_tiles=[(32, 32, 4, 2), (32, 32, 8, 2), (16, 32, 8, 2), (32, 16, 8, 2)],
    interpreted_tile=(16, 32))
DQ_KERNELS = autotuned(
    _dq_kernel,
    tiles={32: [(128, 32, 4, 5), (128, 64, 8, 3), (64, 64, 4, 4), (128, 16, 4, 4)],
           64: [(128, 32, 4, 5), (128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (128, 16, 4, 4)],
           128: [(128, 64, 8, 3), (128, 32, 8, 4), (128, 64, 8, 2), (64, 64, 8, 3),
                 (64, 32, 4, 4)]},
    fp32_tiles=[(32, 32, 4, 2), (32, 32, 8, 2), (32, 16, 8, 2), (32, 16, 4, 2)],
    interpreted_tile=(32, 16))


def strides3(t):
    """(batch, head, row) strides of a (B, nh, T, hs) tensor whose last dim has stride 1."""
    return t.stride(0), t.stride(1), t.stride(2)


@triton_op("mini_llm::triton_attention_bwd", mutates_args=())
def _attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, do: torch.Tensor, causal: bool, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, nh, t_q, t_k, hs = check_attention_backward(BWD_OP, q, k, v, o, lse, do, causal)
    dq, dk, dv = attention_bwd_outputs(q, k)
    if t_q == 0 or B * nh == 0:  # no query: no gradient flows to any key
        return dq, dk.zero_(), dv.zero_()
    delta = torch.empty((B, nh, t_q), dtype=torch.float32, device=q.device)
    wrap_triton(_delta_kernel)[(triton.cdiv(t_q, DELTA_BLOCK_M), B * nh)](
        o, do, delta, *strides3(o), *strides3(do), nh, t_q, HEAD_DIM=hs, BLOCK_M=DELTA_BLOCK_M)
    precision = dot_precision(q.dtype)
    common = dict(HEAD_DIM=hs, CAUSAL=causal, DOT_PRECISION=precision)
    sizes = (nh, t_q, t_k, scale * LOG2E, scale, seq_bucket(t_q, t_k))
    strides = (*strides3(q), *strides3(k), *strides3(v), *strides3(do))
    wrap_triton(DKDV_KERNELS[precision, hs])[blocks_grid(t_k, "BLOCK_N", B * nh)](
        q, k, v, do, lse, delta, dk, dv, *strides, *sizes, **common)
    wrap_triton(DQ_KERNELS[precision, hs])[blocks_grid(t_q, "BLOCK_M", B * nh)](
        q, k, v, do, lse, delta, dq, *strides, *sizes, **common)
    return dq, dk, dv


@_attention_bwd.register_fake
def _(q, k, v, o, lse, do, causal, scale):
    return attention_bwd_outputs(q, k)


def attention_backward(q, k, v, o, lse, do, causal, scale=None):
    """Gradients (dq, dk, dv) of attention(q, k, v, causal, scale) given its output o, its
    saved lse (float32 (B, nh, Tq), natural-log logsumexp of the visible scale * q.k) and the
    output's gradient do. q, k, v, o, do may be strided views with a unit last stride; the
    gradients come back contiguous in q's dtype."""
    check_attention_backward(BWD_OP, q, k, v, o, lse, do, causal)  # before dispatch, as forward
    return torch.ops.mini_llm.triton_attention_bwd(q, k, v, o, lse, do, causal,
                                                   softmax_scale(BWD_OP, q.size(-1), scale))
