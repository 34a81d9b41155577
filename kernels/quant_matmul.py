"""Weight-only quantized matmul in Triton: y = x @ W.T with W stored as int8 or packed int4.

The op is `quant_matmul` in mini_llm/ops/reference.py, the format is mini_llm/ops/quant_format.py: x
(..., K) in fp32/fp16/bf16; qweight int8 (N, K) with one float16 scale per row, or uint8
(N, K // 2) holding two int4 per byte (k = 2j low nibble, 2j + 1 high, stored as q + 8) with a
float16 scale per group of group_size (32/64/128) consecutive k. Output (..., N) in x's dtype.

The weight is dequantized in registers, tile by tile, and never exists in full precision in
memory: that is the whole point. One kernel, _quant_matmul_kernel, in two shapes:

  GEMV-shaped, M <= 16 tokens (decode). Memory bound: every weight byte is read once and does
    2 * M flops, so the time is the packed weight's bytes over the memory bandwidth (int8 half
    of bf16's, int4 a quarter). Grid (N tiles, SPLIT_K): each program streams BLOCK_N rows of
    the packed weight across its share of K. When N alone makes too few programs to keep 132
    SMs' loads in flight (small N), K is split too and the partial sums meet in an fp32
    buffer (atomic adds). M <= 2: multiply-add on the CUDA cores, in fp32 (a 16-row tensor-core
    tile would be mostly padding, and this path never needs the tile in shared memory);
    3 <= M <= 16: tl.dot on a 16-row tile, the dequantized weight tile in x's dtype.
  Tiled, M > 16 (prefill): the classic matmul tiling (BLOCK_M x BLOCK_N output tiles, grouped
    launch order for L2 reuse), the weight tile dequantized in registers and fed to tl.dot in
    x's dtype with an fp32 accumulator. fp32 x (M >= 3) uses IEEE products, not tf32, to meet
    the 1e-5 tolerance: correct but slow (Triton emulates that dot with FMAs, and its tiles
    spill); bf16 / fp16 activations are the fast paths.

Dequantizing: int8 keeps q unscaled in the tile (exact in bf16/fp16) and applies the row scale
once to the accumulator at the end. int4 multiplies each group of the tile by its scale (a
block spans whole groups: BLOCK_K is a multiple of group_size, the tile is viewed as (BLOCK_N,
groups, group_size / 2) bytes, so a scale is one load per group, broadcast). Integers become
floats with the 2^23 trick below instead of int-to-float conversions, whose throughput (16 per
clock per SM) would otherwise cap int4 below the memory bandwidth.

Registered as torch.library.triton_op mini_llm::triton_quant_matmul with a fake; inference only.

Test:  python -m pytest -q tests/test_triton_quant_matmul.py   (interpreted without a GPU)
Bench: python -m mini_llm.kernels.quant_matmul                 (GPU: GB/s and time vs bf16 torch.matmul)
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from mini_llm.ops.checks import check_quant_matmul, fail

from .autotune import autotune
from .common import INTERPRETED, dot_precision, mma, sm_count

OP = "quant_matmul (triton)"  # how input errors name the op
GEMV_MAX_M = 16  # up to this many rows of x: the GEMV-shaped kernel
FMA_MAX_M = 2  # up to this many: CUDA-core multiply-adds, no tensor-core tile
SPLIT_MIN_BLOCK_N = 16  # the smallest GEMV tile: N / 16 programs per split
SPLIT_MIN_K = 512  # each K split streams at least this many k per row


@triton.jit
def _exact_float(v, ZERO: tl.constexpr):
    """float32(v - ZERO) for int32 v in [0, 2^23), without an int-to-float conversion: the
    bits 0x4B000000 | v read as a float32 are 2^23 + v (exponent 23, v in the mantissa)."""
    return (v | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + ZERO)


@triton.jit
def _weight_tile(qw_ptr, scales_ptr, offs_n, n_mask, k0, K,
                 BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """W[offs_n, k0 : k0 + BLOCK_K] as float32 (BLOCK_N, BLOCK_K); 0 past N and K.
    int8: q, unscaled (the caller applies the row scale). int4: q * its group's scale."""
    rows = offs_n.to(tl.int64)
    if BITS == 8:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        q = tl.load(qw_ptr + rows[:, None] * K + offs_k[None, :],
                    mask=n_mask[:, None] & (offs_k < K)[None, :], other=0)  # int8
        return _exact_float(q.to(tl.int32) + 128, 128)
    else:
        GROUPS: tl.constexpr = BLOCK_K // GROUP  # whole groups per block
        HALF: tl.constexpr = GROUP // 2  # bytes per group
        n_groups = K // GROUP
        groups = k0 // GROUP + tl.arange(0, GROUPS)
        g_mask = n_mask[:, None] & (groups < n_groups)[None, :]  # (BLOCK_N, GROUPS)
        byte = groups[None, :, None] * HALF + tl.arange(0, HALF)[None, None, :]
        packed = tl.load(qw_ptr + rows[:, None, None] * (K // 2) + byte,
                         mask=g_mask[:, :, None], other=0).to(tl.int32)  # (BLOCK_N, GROUPS, HALF)
        # A masked group reads scale 0, so its nibbles (read as 0, q = -8) still give 0.
        scale = tl.load(scales_ptr + rows[:, None] * n_groups + groups[None, :], mask=g_mask,
                        other=0.0).to(tl.float32)[:, :, None]
        low = _exact_float(packed & 0xF, 8) * scale  # k = 2j
        high = _exact_float(packed >> 4, 8) * scale  # k = 2j + 1
        # join -> (BLOCK_N, GROUPS, HALF, 2): flattening puts k = 2j and 2j + 1 side by side.
        return tl.reshape(tl.join(low, high), (BLOCK_N, BLOCK_K))


@triton.jit
def _quant_matmul_kernel(
    x_ptr, qw_ptr, scales_ptr, out_ptr,  # x (M, K) rows stride_xm apart; out (M, N) contiguous
    M, N, K, stride_xm,
    M_BUCKET,  # only an autotuning key: M rounded up to a power of two
    BITS: tl.constexpr, GROUP: tl.constexpr,  # GROUP: int4's group size (unused for int8)
    SPLIT_K: tl.constexpr,  # > 1: K is split across programs that atomically add into fp32 out
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Output tile of this program; GROUP_M row tiles are walked together so that the weight
    # tiles they share are still in L2 (with one row tile, as in the GEMV shape, a no-op).
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    first_m = (pid // (GROUP_M * tiles_n)) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_rows
    pid_n = (pid % (GROUP_M * tiles_n)) // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm  # (BLOCK_M, 1)

    # This program's share of the K blocks (all of them unless K is split).
    k_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_blocks, SPLIT_K)
    kb_start = tl.program_id(1) * per_split
    kb_end = min(kb_start + per_split, k_blocks)

    USE_DOT: tl.constexpr = BLOCK_M >= 16
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # CUDA-core path: per-k partial sums, reduced over k once after the loop, so that the loop
    # is nothing but loads and fp32 multiply-adds. (A 1-wide dummy on the tensor-core path.)
    acc_k = tl.zeros((BLOCK_M, BLOCK_N, 1 if USE_DOT else BLOCK_K), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & (offs_k < K)[None, :], other=0.0)
        w = _weight_tile(qw_ptr, scales_ptr, offs_n, n_mask, k0, K, BITS, GROUP, BLOCK_N, BLOCK_K)
        if USE_DOT:  # tensor cores: (BLOCK_M, BLOCK_K) @ (BLOCK_K, BLOCK_N)
            acc = mma(x, tl.trans(w.to(x.dtype)), acc, DOT_PRECISION)
        else:
            acc_k += x.to(tl.float32)[:, None, :] * w[None, :, :]
    if not USE_DOT:
        acc = tl.sum(acc_k, axis=2)
    if BITS == 8:  # one scale per output channel, applied once
        acc *= tl.load(scales_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]

    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)


def _fits(configs, named_args, **kwargs):
    """Drop the configs that cannot run this call: an int4 block must hold whole groups, and
    the CUDA-core path's (BLOCK_M, BLOCK_N, BLOCK_K) product must fit in registers."""
    args = {**named_args, **kwargs}
    kept = []
    for c in configs:
        meta = {**args, **c.kwargs}
        if meta["BITS"] == 4 and meta["BLOCK_K"] % meta["GROUP"]:
            continue
        if meta["BLOCK_M"] < 16 and meta["BLOCK_M"] * meta["BLOCK_N"] * meta["BLOCK_K"] > 64 * 32 * c.num_warps:
            continue
        kept.append(c)
    return kept


def _autotuned(names, rows, interpreted_row, key):
    """The kernel autotuned over `rows` of (*names, num_warps, num_stages); a single small
    config under the interpreter, where every extra one is seconds of tuning. Tuning runs the
    kernel several times: out is zeroed before each run, and before the real one, for the
    atomic adds of split K."""
    configs = [triton.Config(dict(zip(names, row)), num_warps=row[-2], num_stages=row[-1])
               for row in ([interpreted_row] if INTERPRETED else rows)]
    return autotune(configs, key=key, prune=_fits, reset_to_zero=["out_ptr"])(_quant_matmul_kernel)


# GEMV shape: narrow N tiles (many programs: N / BLOCK_N of them) and long K blocks (few loop
# steps, KBs of weight in flight per program). BLOCK_M comes from the caller (1, 2 or 16).
_gemv = _autotuned(
    ("BLOCK_N", "BLOCK_K"),
    [(16, 256, 4, 4), (16, 512, 4, 3), (32, 128, 4, 4), (32, 256, 4, 3), (32, 512, 8, 3), (64, 128, 4, 3),
     (64, 256, 8, 3), (16, 128, 2, 4)],
    (16, 256, 4, 1), key=["N", "K", "BLOCK_M", "BITS", "GROUP", "SPLIT_K"])

# Tiled shape, H100/A100-sized tiles; int4 with group 128 keeps those with BLOCK_K 128. The
# last, small one is there for float32 activations with group 128 on an A100: every other
# BLOCK_K 128 tile needs more than its 163 KB of shared memory (bench/triton_aot_check.py).
_gemm = _autotuned(
    ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
    [(128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
     (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 256, 128, 8, 3), (64, 128, 32, 4, 4),
     (64, 64, 128, 4, 2)],
    (32, 32, 256, 4, 1), key=["M_BUCKET", "N", "K", "BITS", "GROUP", "SPLIT_K"])


def plan_split_k(M, N, K, device):
    """How many programs share each row's K: 1 when N / 16 tiles already give every SM a
    program (or M > 16: then the M tiles fill the GPU); else a power of two, each split
    still streaming at least SPLIT_MIN_K of every row."""
    if M > GEMV_MAX_M:
        return 1
    sms = sm_count(device.index or 0) if device.type == "cuda" else 4
    split = 1
    while split * 2 * triton.cdiv(N, SPLIT_MIN_BLOCK_N) <= sms and split * 2 * SPLIT_MIN_K <= K:
        split *= 2
    return split


@triton_op("mini_llm::triton_quant_matmul", mutates_args={})
def _quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                  split_k: int) -> torch.Tensor:
    """x (M, K), stride 1 along K -> (M, N) in x's dtype. split_k 0: plan_split_k's choice
    (planned here, inside the op, so that torch.compile need not trace the planning)."""
    M, K = x.shape
    N = qweight.shape[0]
    bits = 8 if qweight.dtype == torch.int8 else 4
    split_k = split_k or plan_split_k(M, N, K, x.device)
    # Split K: partial sums meet in fp32 (zeroed; atomic adds), cast to x's dtype after.
    out = torch.zeros((M, N), dtype=torch.float32, device=x.device) if split_k > 1 else \
        torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return out.to(x.dtype)
    common = dict(BITS=bits, GROUP=group_size if bits == 4 else 0, SPLIT_K=split_k,
                  DOT_PRECISION=dot_precision(x.dtype))
    args = (x, qweight, scales, out, M, N, K, x.stride(0), triton.next_power_of_2(M))

    def grid(meta):
        return triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), split_k

    if M <= GEMV_MAX_M:
        wrap_triton(_gemv)[grid](*args, **common, BLOCK_M=M if M <= FMA_MAX_M else 16, GROUP_M=1)
    else:
        wrap_triton(_gemm)[grid](*args, **common, GROUP_M=8)
    return out.to(x.dtype)


@_quant_matmul.register_fake
def _(x, qweight, scales, group_size, split_k):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def quant_matmul(x, qweight, scales, group_size, *, split_k=None):
    """The reference's quant_matmul: x (..., K) @ dequantize(qweight, scales, group_size).T ->
    (..., N) in x's dtype, the weight dequantized in registers. split_k: how many programs
    share each row's K (default: plan_split_k, enough to fill the GPU when N alone does not)."""
    _, N, K = check_quant_matmul(OP, x, qweight, scales, group_size)
    if split_k is not None and (not isinstance(split_k, int) or split_k < 1):
        fail(OP, f"split_k must be a positive int, got {split_k!r}")
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return _quant_matmul(x2, qweight, scales, group_size, split_k or 0).reshape(*x.shape[:-1], N)


if __name__ == "__main__":
    # Time on a GPU against what a user would otherwise run: torch.matmul with a bf16 weight.
    # GB/s counts the bytes the op must move: the stored weight (+ scales), x and the output.
    assert torch.cuda.is_available() and not INTERPRETED, "needs a GPU"
    from triton.testing import do_bench

    from mini_llm.ops.quant_format import dequantize, quantize

    print(f"{'M':>5} {'K=N':>5} {'format':<10}{'ours us':>9}{'GB/s':>7}{'bf16 us':>9}{'GB/s':>7}{'speedup':>9}")
    for K in (4096, 8192):
        w = torch.randn(K, K, device="cuda") * 0.02
        w_bf16 = w.to(torch.bfloat16)
        for bits, group in ((8, K), (4, 64), (4, 128)):
            qweight, scales = quantize(w, bits, group)
            err = (dequantize(qweight, scales, group) - w).norm() / w.norm()
            for M in (1, 2, 4, 8, 16, 64, 2048):
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
                ours = do_bench(lambda: quant_matmul(x, qweight, scales, group))
                base = do_bench(lambda: torch.matmul(x, w_bf16.T))
                x_out = 2 * M * (K + K)  # bf16 x in, y out
                ours_gb = (qweight.numel() * qweight.element_size() + scales.numel() * 2 + x_out) / ours / 1e6
                base_gb = (w_bf16.numel() * 2 + x_out) / base / 1e6
                fmt = f"int{bits}" + (f" g{group}" if bits == 4 else "")
                print(f"{M:>5} {K:>5} {fmt:<10}{ours * 1e3:9.1f}{ours_gb:7.0f}{base * 1e3:9.1f}{base_gb:7.0f}"
                      f"{base / ours:8.2f}x")
            print(f"            {fmt} weight error ||W - deq|| / ||W|| = {err:.2e}")
