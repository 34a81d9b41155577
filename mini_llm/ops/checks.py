"""Input checks shared by the Triton launchers and the CUDA wrappers: each raises a
KernelInputError that names the argument and what was expected, before any launch.
(The CUDA binding, csrc/bindings.cpp, repeats the tensor checks in C++ for direct callers.)

The kernels' limits are named here, once; each backend passes its own to the checks. The CUDA
ones are also C++ constants in csrc/<op>.h (named beside each), which
tests/test_op_contracts.py reads and holds equal to these.
"""

import math
import os

import torch

from ..errors import KernelInputError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The widest norm row: a row lives in one program's (Triton) or one block's (CUDA) registers.
TRITON_NORM_MAX_COLS = 65536  # kernels/layer_norm.py: spills past 16384, correct but slower
CUDA_NORM_MAX_COLS = 8192  # kNormMaxCols: 512 threads x 16 elements (csrc/layer_norm.cu)
# The head dims the kernels are compiled for.
ATTENTION_HEAD_DIMS = (32, 64, 128)  # both backends; kAttentionHeadDims
TRITON_DECODE_HEAD_DIMS = (32, 64, 128)
CUDA_DECODE_HEAD_DIMS = (64, 128)  # kDecodeHeadDims
# The quantized weight formats (mini_llm/ops/quant_format.py), both backends.
QUANT_BITS = (4, 8)
QUANT_GROUP_SIZES = (32, 64, 128)  # int4 (kQuantGroupSizes); int8 has one scale per output channel


def fail(op, message):
    raise KernelInputError(f"{op}: {message}")


def check_device(op, device, **tensors):
    """Every tensor on `device` (a CUDA GPU; or the CPU when Triton runs interpreted)."""
    for name, t in tensors.items():
        if t is not None and t.device != device:
            fail(op, f"{name} is on {t.device}, expected {device}")


def check_dtype(op, allowed=FLOAT_DTYPES, **tensors):
    for name, t in tensors.items():
        if t is not None and t.dtype not in allowed:
            fail(op, f"{name} has dtype {t.dtype}; supported: {', '.join(str(d) for d in allowed)}")


def check_rank(op, rank, **tensors):
    for name, t in tensors.items():
        if t is not None and t.dim() != rank:
            fail(op, f"{name} must have {rank} dimensions, got shape {tuple(t.shape)}")


def check_contiguous(op, **tensors):
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            fail(op, f"{name} must be contiguous (call .contiguous() first); strides {t.stride()}")


def kernel_device(op, t, interpreted_ok=True):
    """The device a kernel runs on: a CUDA tensor's, or the CPU when Triton is interpreted."""
    if t.is_cuda or (interpreted_ok and os.environ.get("TRITON_INTERPRET") == "1"):
        return t.device
    fail(op, f"inputs must be CUDA tensors, got one on {t.device}")


# -- layer_norm / rms_norm --


def norm_op(delta, rms):
    """The public name of the norm op a call is: layer_norm, rms_norm or their add_ forms."""
    return ("add_" if delta is not None else "") + ("rms_norm" if rms else "layer_norm")


def check_norm(op, x, weight, bias, delta, max_cols):
    """x: (..., C) float with its last dim contiguous (any layout of the leading dims),
    1 <= C <= max_cols (the backend's *_NORM_MAX_COLS); weight, bias: (C,); delta (the fused
    residual ops): x's shape. Dtypes may differ (bf16 x with fp32 weight, fp32 x with bf16 delta
    under autocast). Returns C."""
    device = kernel_device(op, x)
    check_device(op, device, x=x, delta=delta, weight=weight, bias=bias)
    check_dtype(op, x=x, delta=delta, weight=weight, bias=bias)
    if x.dim() == 0 or x.size(-1) == 0:
        fail(op, f"x must be (..., C) with C >= 1, got shape {tuple(x.shape)}")
    C = x.size(-1)
    if C > max_cols:
        fail(op, f"rows of {C} channels are wider than this kernel's limit of {max_cols} "
                 f"(a row must fit in the registers of one program or block)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            fail(op, f"{name} must have shape ({C},) to match x {tuple(x.shape)}, got {tuple(t.shape)}")
    if delta is not None and delta.shape != x.shape:
        fail(op, f"delta {tuple(delta.shape)} must have the shape of x {tuple(x.shape)}")
    for name, t in (("x", x), ("delta", delta)):
        if t is not None and C > 1 and t.stride(-1) != 1:
            fail(op, f"{name} must be contiguous in its last dim (stride 1), got strides {t.stride()}")
    return C

# -- attention --


def softmax_scale(op, head_dim, scale):
    """The attention ops' scale as a float: 1 / sqrt(head_dim) when None; any finite value
    (a negative one flips which key each query favours)."""
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if not math.isfinite(scale):
        fail(op, f"scale must be finite, got {scale}")
    return scale


def check_attention(op, q, k, v, causal, head_dims=ATTENTION_HEAD_DIMS):
    """q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs), one float dtype, on the kernel's device; each
    may be a strided view (e.g. a .transpose(1, 2) of (B, T, nh, hs)) as long as its last dim
    has stride 1. With causal, the queries are the last Tq of the Tk positions, so Tq <= Tk.
    Returns (B, nh, Tq, Tk, hs)."""
    device = kernel_device(op, q)
    check_device(op, device, q=q, k=k, v=v)
    check_rank(op, 4, q=q, k=k, v=v)
    check_dtype(op, FLOAT_DTYPES, q=q)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        fail(op, f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        fail(op, f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in shape")
    B, nh, t_q, hs = q.shape
    t_k = k.shape[2]
    if k.shape[0] != B or k.shape[1] != nh or k.shape[3] != hs:
        fail(op, f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch, heads or head dim")
    if hs not in head_dims:
        fail(op, f"head dim {hs} is not supported; supported: {', '.join(map(str, head_dims))}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            fail(op, f"{name} must have stride 1 in its last (head) dim, got strides {t.stride()}")
    if t_k == 0:
        fail(op, "k and v have no positions (Tk = 0): there is nothing to attend to")
    if causal and t_q > t_k:
        fail(op, f"causal attention needs Tq <= Tk (the queries are the last Tq of the Tk "
                 f"positions), got Tq = {t_q}, Tk = {t_k}")
    return B, nh, t_q, t_k, hs


def check_attention_backward(op, q, k, v, o, lse, do, causal, head_dims=ATTENTION_HEAD_DIMS):
    """check_attention's rules, plus o and do shaped like q in q's dtype (o may be strided like
    q, last-dim stride 1) and lse float32 (B, nh, Tq) contiguous: the natural-log logsumexp
    over the visible keys of scale * q.k, as the forward saved it."""
    B, nh, t_q, t_k, hs = check_attention(op, q, k, v, causal, head_dims)
    check_device(op, q.device, o=o, lse=lse, do=do)
    for name, t in (("o", o), ("do", do)):
        if t.shape != q.shape or t.dtype != q.dtype:
            fail(op, f"{name} must match q: {t.dtype} {tuple(t.shape)} vs {q.dtype} {tuple(q.shape)}")
        if t.stride(-1) != 1:
            fail(op, f"{name} must have stride 1 in its last (head) dim, got strides {t.stride()}")
    if lse.dtype != torch.float32 or tuple(lse.shape) != (B, nh, t_q):
        fail(op, f"lse must be float32 of shape ({B}, {nh}, {t_q}), got {lse.dtype} {tuple(lse.shape)}")
    check_contiguous(op, lse=lse)
    return B, nh, t_q, t_k, hs


# -- decode_attention --


def check_decode_attention(op, q, k_cache, v_cache, cache_lens, head_dims, longest=None, num_splits=None):
    """q: (B, nh, Tq, hs), hs in head_dims (the backend's *_DECODE_HEAD_DIMS); k_cache,
    v_cache: (B, nkv, Tmax, hs) with nh % nkv == 0;
    cache_lens: (B,) int32, each in [Tq, Tmax]; num_splits (how many chunks to cut each cache
    into; None: the kernel's choice) >= 1. Checking the lengths reads them back: one
    device sync, skipped while a CUDA graph is being captured, and skipped when the caller
    passes `longest`, the longest length, known on the host (the KV cache knows it: a decode
    step then syncs nowhere). Returns the longest length (a kernel may size its work by it), or
    None when the lengths were not read."""
    device = kernel_device(op, q)
    check_device(op, device, q=q, k_cache=k_cache, v_cache=v_cache, cache_lens=cache_lens)
    check_rank(op, 4, q=q, k_cache=k_cache, v_cache=v_cache)
    check_dtype(op, (torch.float16, torch.bfloat16, torch.float32), q=q)
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        fail(op, f"q, k_cache, v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if k_cache.shape != v_cache.shape:
        fail(op, f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    B, nh, t_q, hs = q.shape
    b_k, nkv, t_max, hs_k = k_cache.shape
    if b_k != B or hs_k != hs:
        fail(op, f"q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} disagree on batch or head dim")
    if hs not in head_dims:
        fail(op, f"head dim {hs} is not supported; supported: {', '.join(map(str, head_dims))}")
    if nh % nkv:
        fail(op, f"{nh} query heads cannot share {nkv} key/value heads evenly")
    check_contiguous(op, k_cache=k_cache, v_cache=v_cache)
    if cache_lens.dim() != 1 or cache_lens.numel() != B or cache_lens.dtype != torch.int32:
        fail(op, f"cache_lens must be an int32 tensor of shape ({B},), got {cache_lens.dtype} "
                 f"{tuple(cache_lens.shape)}")
    if num_splits is not None and not (isinstance(num_splits, int) and num_splits >= 1):
        fail(op, f"num_splits must be an int >= 1 (None: automatic), got {num_splits!r}")
    if longest is not None:
        if not t_q <= longest <= t_max:
            fail(op, f"longest {longest} must lie in [{t_q}, {t_max}]")
        return longest
    if (cache_lens.is_cuda and torch.cuda.is_current_stream_capturing()) or B == 0:
        return None
    shortest, longest = torch.stack(torch.aminmax(cache_lens)).tolist()  # the one sync
    if shortest < t_q or longest > t_max:
        fail(op, f"cache_lens {cache_lens.tolist()} must lie in [{t_q}, {t_max}]: the {t_q} new "
                 f"positions are the last of each sequence, and the cache holds {t_max}")
    return longest

# -- quant_matmul --


def check_quant_weight(op, qweight, scales, group_size):
    """A quantized weight (mini_llm/ops/quant_format.py): int8 (N, K), one float16 scale per row
    (group_size == K); or uint8 (N, K // 2), two int4 per byte, float16 scales
    (N, K // group_size), group_size in QUANT_GROUP_SIZES. Returns (bits, N, K)."""
    check_dtype(op, (torch.int8, torch.uint8), qweight=qweight)
    check_dtype(op, (torch.float16,), scales=scales)
    check_rank(op, 2, qweight=qweight, scales=scales)
    check_contiguous(op, qweight=qweight, scales=scales)
    N = qweight.shape[0]
    if qweight.dtype == torch.int8:
        bits, K = 8, qweight.shape[1]
        if group_size != K:
            fail(op, f"int8 weights have one scale per output channel: group_size must be "
                     f"K = {K}, got {group_size}")
    else:
        bits, K = 4, 2 * qweight.shape[1]
        if group_size not in QUANT_GROUP_SIZES:
            fail(op, f"int4 group_size {group_size} is not supported; supported: "
                     f"{', '.join(map(str, QUANT_GROUP_SIZES))}")
        if K % group_size:
            fail(op, f"group_size {group_size} does not divide K = {K} (qweight {tuple(qweight.shape)} "
                     f"holds two int4 per byte)")
    if tuple(scales.shape) != (N, K // group_size):
        fail(op, f"scales {tuple(scales.shape)} do not match qweight {tuple(qweight.shape)} "
                 f"({bits}-bit) with group_size {group_size}: expected ({N}, {K // group_size})")
    return bits, N, K


def check_quant_matmul(op, x, qweight, scales, group_size):
    """x: (..., K) float32/float16/bfloat16 against a quantized weight (check_quant_weight),
    all on the kernel's device. Returns (bits, N, K)."""
    device = kernel_device(op, x)
    check_device(op, device, x=x, qweight=qweight, scales=scales)
    check_dtype(op, FLOAT_DTYPES, x=x)
    if x.dim() < 1:
        fail(op, "x must have at least one dimension (..., K)")
    bits, N, K = check_quant_weight(op, qweight, scales, group_size)
    if x.shape[-1] != K:
        fail(op, f"x {tuple(x.shape)} has K = {x.shape[-1]} but the weight has K = {K} "
                 f"(qweight {tuple(qweight.shape)}, {bits}-bit)")
    return bits, N, K
