"""Decode attention in Triton: a few new queries per sequence against a KV cache
(flash-decoding).

The op is `decode_attention` in mini_llm/ops/reference.py: q (B, nh, Tq, hs) with Tq small
(1..16), k_cache / v_cache (B, nkv, Tmax, hs), cache_lens (B,) int32 = each sequence's filled
length, its Tq new positions last (bottom-right causal per sequence); query head h reads
key/value head h // (nh // nkv).

Why flash-decoding: with one query per sequence there is no query axis to spread over the GPU:
B * nkv programs (often 8..64) cannot fill 132 SMs. So each sequence's cache is also cut into
`num_splits` chunks of `split_size` keys:

  _decode_split_kernel    grid (B * nkv, num_splits, row blocks). One program reads one chunk
                          of K and V ONCE for all the query heads of its kv group and all Tq
                          queries (the rows of its q tile are (head in group, query) pairs,
                          padded to >= 16 for tl.dot; past 64 rows, 16 in fp32, the rows take
                          several programs, each reading the chunk), runs the online softmax in
                          fp32, and writes its normalised partial output and log2-sum-exp to an
                          fp32 workspace. With one split it writes the final output directly.
  _decode_combine_kernel  grid (B * nh * Tq, hs / 32). Merges a row's splits, weighting each
                          partial output by exp2(lse_i - lse_max); hs is cut in 128-byte
                          pieces so that even B * nh * Tq = 32 rows make enough programs.

A chunk that starts past its sequence's length exits at once, and the combine only reads the
cdiv(len, split_size) chunks that exist. The op is memory bound (each K/V element read once
meets only group * Tq query rows), so the work is to keep enough loads in flight:
software-pipelined key blocks (num_stages) and ~4 programs per SM. The block sizes were chosen
from ptxas's register and shared-memory counts, not yet from timings on a GPU.

Test: python -m pytest -q tests/test_triton_decode_attention.py   (interpreted without a GPU)
Bench: python -m mini_llm.kernels.decode_attention   (GPU: GB/s of K/V read vs SDPA, vs a copy)
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from mini_llm.ops.checks import TRITON_DECODE_HEAD_DIMS, check_decode_attention, fail, softmax_scale

from .common import INTERPRETED, LOG2E, dot_precision, mma, sm_count

OP = "decode_attention (triton)"  # how input errors name the op
PROGRAMS_PER_SM = 4  # split until the grid holds about this many programs per SM
MIN_BLOCKS_PER_SPLIT = 2  # a shorter chunk costs more in partial outputs than it saves
COMBINE_SPLITS = 4 if INTERPRETED else 32  # chunks merged per step (few interpreted: tests loop)


class Tiles(NamedTuple):
    block_n: int  # keys per loop step; chunks are whole blocks
    max_block_m: int  # q-tile rows (group * Tq) per program; more rows take more row blocks
    num_stages: int  # key blocks in flight (cp.async software pipeline)


def tiles(dtype):
    """16-bit: 64 keys x hs 128 = 32 KB of K+V per step, 3 stages: ~70 KB of shared memory,
    111 registers at 16 rows (ptxas, sm_90), so 2-3 programs fit an SM. fp32 (exact IEEE
    products, no tensor cores) runs out of registers on bigger tiles, hence 16 x 16.
    Interpreted: 16-key blocks, so that small test caches still cross several."""
    if dtype == torch.float32:
        return Tiles(16, 16, 3)
    return Tiles(16 if INTERPRETED else 64, 64, 3)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, lens_ptr, out_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,  # k_cache and v_cache are contiguous and alike
    stride_ob, stride_oh, stride_ot,
    nh, nkv, t_q, group, num_splits, split_size, qk_scale,  # qk_scale = scale * log2(e)
    HS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_bkv = tl.program_id(0)
    split = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_bkv // nkv).to(tl.int64)  # int64: b * stride_kb passes 2**31 on big caches
    kv_head = pid_bkv % nkv
    seq_len = tl.load(lens_ptr + b)
    start = split * split_size
    if start >= seq_len:  # this chunk lies past the sequence: nothing to read or write
        return
    end = tl.minimum(start + split_size, seq_len)

    # Row r of the q tile is query (r % t_q) of head (kv_head * group + r // t_q).
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_ok = rows < group * t_q
    head = kv_head * group + rows // t_q
    query = rows % t_q
    last_key = seq_len - t_q + query  # (BLOCK_M,) the last position each row may see
    offs_d = tl.arange(0, HS)
    q_offs = b * stride_qb + head * stride_qh + query * stride_qt
    q = tl.load(q_ptr + q_offs[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    kv_base = b * stride_kb + kv_head * stride_kh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of the scores (log2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_M, HS], tl.float32)
    for n0 in range(start, end, BLOCK_N):  # chunks are whole blocks, so blocks never cross one
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < seq_len  # past the length the cache may hold anything, NaN included
        kv_offs = kv_base + offs_n[:, None] * stride_kt + offs_d[None, :]  # (BLOCK_N, HS)
        k = tl.load(k_ptr + kv_offs, mask=kv_ok[:, None], other=0.0)
        v = tl.load(v_ptr + kv_offs, mask=kv_ok[:, None], other=0.0)
        s = mma(q, tl.trans(k), None, DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        s = tl.where(offs_n[None, :] <= last_key[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row may have seen no key of this chunk yet (its query comes before this block):
        # subtract 0 rather than -inf there, so that exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        p = tl.exp2(s - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, None, DOT_PRECISION)
        m_i = m_new

    seen = l_i > 0.0  # false for a row whose query comes before this whole chunk
    l_seen = tl.where(seen, l_i, 1.0)
    o = acc / l_seen[:, None]
    if SINGLE_SPLIT:  # the only chunk: this is the answer
        out_offs = b * stride_ob + head * stride_oh + query * stride_ot
        tl.store(out_ptr + out_offs[:, None] + offs_d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])
    else:
        part = ((b * nh + head) * t_q + query) * num_splits + split  # (BLOCK_M,)
        tl.store(lse_part_ptr + part, tl.where(seen, m_i + tl.log2(l_seen), float("-inf")), mask=row_ok)
        tl.store(o_part_ptr + part[:, None] * HS + offs_d[None, :], o, mask=row_ok[:, None])


@triton.jit
def _decode_combine_kernel(
    o_part_ptr, lse_part_ptr, lens_ptr, out_ptr,
    stride_ob, stride_oh, stride_ot,
    nh, t_q, num_splits, split_size,
    HS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # (b, head, query) of the output
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = row // (nh * t_q)
    head = (row // t_q) % nh
    query = row % t_q
    n_chunks = tl.cdiv(tl.load(lens_ptr + b), split_size)  # chunks that ran for this sequence
    offs_s = tl.arange(0, BLOCK_S)
    lse_row = lse_part_ptr + row * num_splits
    o_row = o_part_ptr + row * num_splits * HS

    # Pass 1: the largest lse (chunk 0 holds key 0, which every query sees: it is finite).
    lse_max = tl.full([BLOCK_S], float("-inf"), tl.float32)
    for s0 in range(0, n_chunks, BLOCK_S):
        lse = tl.load(lse_row + s0 + offs_s, mask=s0 + offs_s < n_chunks, other=float("-inf"))
        lse_max = tl.maximum(lse_max, lse)
    top = tl.max(lse_max, 0)
    # Pass 2: out = sum_i w_i * o_i / sum_i w_i with w_i = exp2(lse_i - top).
    weight = tl.zeros([BLOCK_S], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, n_chunks, BLOCK_S):
        ok = s0 + offs_s < n_chunks
        w = tl.exp2(tl.load(lse_row + s0 + offs_s, mask=ok, other=float("-inf")) - top)
        o = tl.load(o_row + (s0 + offs_s[:, None]) * HS + offs_d[None, :], mask=ok[:, None], other=0.0)
        weight += w
        acc += tl.sum(w[:, None] * o, 0)
    out = acc / tl.sum(weight, 0)
    tl.store(out_ptr + b * stride_ob + head * stride_oh + query * stride_ot + offs_d,
             out.to(out_ptr.dtype.element_ty))


def _q_tile(rows, max_block_m):
    """(BLOCK_M, row blocks) for a q tile of `rows` = group * Tq rows: at least 16 rows
    (tl.dot's minimum), at most max_block_m per program."""
    block_m = min(max(16, triton.next_power_of_2(rows)), max_block_m)
    return block_m, triton.cdiv(rows, block_m)


def plan_splits(programs_per_split, longest, block_n, device, num_splits=None):
    """(num_splits, split_size): how to cut the longest sequence's keys into chunks of whole
    blocks. Chosen so that the grid holds ~PROGRAMS_PER_SM programs per SM (8 programs in
    the interpreter), each chunk at least MIN_BLOCKS_PER_SPLIT blocks; or as asked."""
    blocks = triton.cdiv(longest, block_n)
    if num_splits is None:
        slots = PROGRAMS_PER_SM * sm_count(device.index or 0) if device.type == "cuda" else 8
        num_splits = min(triton.cdiv(slots, programs_per_split), triton.cdiv(blocks, MIN_BLOCKS_PER_SPLIT))
    split_size = triton.cdiv(blocks, max(1, min(num_splits, blocks))) * block_n
    return triton.cdiv(longest, split_size), split_size  # no chunk starts past the longest


def _plan(q, k_cache, longest, num_splits=None):
    """plan_splits for these inputs: programs per split = B * nkv * row blocks."""
    B, nh, t_q, _ = q.shape
    nkv = k_cache.size(1)
    tile = tiles(q.dtype)
    _, row_blocks = _q_tile(nh // nkv * t_q, tile.max_block_m)
    return plan_splits(B * nkv * row_blocks, longest, tile.block_n, q.device, num_splits)


@triton_op("mini_llm::triton_decode_attention", mutates_args={})
def _decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      cache_lens: torch.Tensor, scale: float, num_splits: int,
                      split_size: int) -> torch.Tensor:
    """The launches, on checked inputs and a plan from plan_splits: split_size a multiple of
    the key block, num_splits * split_size >= every cache length."""
    B, nh, t_q, hs = q.shape
    nkv = k_cache.size(1)
    group = nh // nkv
    out = torch.empty((B, nh, t_q, hs), dtype=q.dtype, device=q.device)
    tile = tiles(q.dtype)
    block_m, row_blocks = _q_tile(group * t_q, tile.max_block_m)
    single = num_splits == 1
    # Partial outputs and their lse, (B, nh, Tq, num_splits[, hs]); unused with one split.
    o_part = torch.empty((B, nh, t_q, num_splits, hs) if not single else (1,), dtype=torch.float32,
                         device=q.device)
    lse_part = torch.empty((B, nh, t_q, num_splits) if not single else (1,), dtype=torch.float32,
                           device=q.device)
    wrap_triton(_decode_split_kernel)[(B * nkv, num_splits, row_blocks)](
        q, k_cache, v_cache, cache_lens, out, o_part, lse_part,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        nh, nkv, t_q, group, num_splits, split_size, scale * LOG2E,
        HS=hs, BLOCK_M=block_m, BLOCK_N=tile.block_n, SINGLE_SPLIT=single, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4 if block_m <= 32 else 8, num_stages=tile.num_stages,
    )
    if not single:
        block_d = 32
        wrap_triton(_decode_combine_kernel)[(B * nh * t_q, hs // block_d)](
            o_part, lse_part, cache_lens, out,
            out.stride(0), out.stride(1), out.stride(2),
            nh, t_q, num_splits, split_size,
            HS=hs, BLOCK_D=block_d, BLOCK_S=COMBINE_SPLITS, num_warps=2,
        )
    return out


@_decode_attention.register_fake
def _(q, k_cache, v_cache, cache_lens, scale, num_splits, split_size):
    return q.new_empty(q.shape)  # contiguous, like the real output


def decode_attention(q, k_cache, v_cache, cache_lens, scale=None, longest=None, *, num_splits=None):
    """The reference's decode_attention, flash-decoding in Triton; returns (B, nh, Tq, hs) in
    q's dtype. q may be a strided view with stride 1 in its last dim; k_cache, v_cache
    contiguous. num_splits: how many chunks to cut the longest cache length into (default:
    enough to fill the GPU); the answer does not depend on it beyond rounding. longest: the
    longest of cache_lens when the caller knows it; the lengths are then not read back."""
    longest = check_decode_attention(OP, q, k_cache, v_cache, cache_lens, TRITON_DECODE_HEAD_DIMS, longest,
                                     num_splits)
    if q.stride(-1) != 1:
        fail(OP, f"q must have stride 1 in its last (head) dim, got strides {q.stride()}")
    if q.numel() == 0:
        return q.new_empty(q.shape)
    if longest is None:  # lengths not read (CUDA graph capture): plan for a full cache
        longest = k_cache.size(2)
    return _decode_attention(q, k_cache, v_cache, cache_lens, softmax_scale(OP, q.size(-1), scale),
                             *_plan(q, k_cache, longest, num_splits))


def _bench():
    """GB/s of K/V read (the bytes of the filled cache, all a decode step must move) for the
    kernels alone (the op, plan made beforehand) and for the public call (with its checks'
    one sync), against the torch backend (SDPA with a per-sequence mask) and a device copy."""
    from triton.testing import do_bench

    from mini_llm.ops import torch_ops

    def measure_copy(n_bytes=1 << 30):  # GB/s of a device-to-device copy: read + write
        src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        return 2 * n_bytes / do_bench(lambda: dst.copy_(src)) / 1e6

    copy_gb_s = measure_copy()
    print(f"{torch.cuda.get_device_name()}: copy {copy_gb_s:.0f} GB/s; nh 32, nkv 8, hs 128, bf16")
    print(f"{'B':>3} {'Tmax':>6} {'Tq':>3} {'lengths':>7} {'splits':>6} | {'kernel us':>9} {'GB/s':>5} "
          f"{'% copy':>6} | {'call GB/s':>9} | {'torch GB/s':>10} {'speed-up':>8}")
    nh, nkv, hs, dtype = 32, 8, 128, torch.bfloat16
    for B, t_max, t_q, mixed in [(1, 4096, 1, False), (1, 32768, 1, False), (8, 4096, 1, False),
                                 (8, 16384, 1, False), (32, 4096, 1, False), (64, 2048, 1, False),
                                 (8, 16384, 4, False), (32, 8192, 1, True)]:
        q = torch.randn(B, nh, t_q, hs, device="cuda", dtype=dtype)
        k, v = (torch.randn(B, nkv, t_max, hs, device="cuda", dtype=dtype) for _ in range(2))
        lens = torch.randint(t_q, t_max + 1, (B,)) if mixed else torch.full((B,), t_max)
        lens = lens.int().cuda()
        kv_bytes = 2 * int(lens.sum()) * nkv * hs * k.element_size()
        scale = 1 / math.sqrt(hs)
        plan = _plan(q, k, int(lens.max()))
        ms = {
            "kernel": do_bench(lambda: _decode_attention(q, k, v, lens, scale, *plan)),
            "call": do_bench(lambda: decode_attention(q, k, v, lens)),
            "torch": do_bench(lambda: torch_ops.decode_attention(q, k, v, lens)),
        }
        gb_s = {name: kv_bytes / t / 1e6 for name, t in ms.items()}
        print(f"{B:>3} {t_max:>6} {t_q:>3} {'mixed' if mixed else 'full':>7} {plan[0]:>6} | "
              f"{ms['kernel'] * 1e3:9.1f} {gb_s['kernel']:5.0f} {100 * gb_s['kernel'] / copy_gb_s:5.0f}% | "
              f"{gb_s['call']:9.0f} | {gb_s['torch']:10.0f} {ms['torch'] / ms['kernel']:7.2f}x")


if __name__ == "__main__":
    _bench()
