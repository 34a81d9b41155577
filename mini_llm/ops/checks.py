"""Input checks shared by the Triton launchers and the CUDA wrappers: each raises a
KernelInputError that names the argument and what was expected, before any launch.
(The CUDA binding, csrc/bindings.cpp, repeats the tensor checks in C++ for direct callers.)"""

import torch

from ..errors import KernelInputError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    import os

    if t.is_cuda or (interpreted_ok and os.environ.get("TRITON_INTERPRET") == "1"):
        return t.device
    fail(op, f"inputs must be CUDA tensors, got one on {t.device}")


# -- layer_norm / rms_norm --

# -- attention --

# -- decode_attention --


def check_decode_attention(op, q, k_cache, v_cache, cache_lens, head_dims=(64, 128)):
    """q: (B, nh, Tq, hs); k_cache, v_cache: (B, nkv, Tmax, hs) with nh % nkv == 0;
    cache_lens: (B,) int32, each in [Tq, Tmax]. Checking the lengths reads them back: one
    device sync, skipped while a CUDA graph is being captured."""
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
    if not (cache_lens.is_cuda and torch.cuda.is_current_stream_capturing()):
        if bool(((cache_lens < t_q) | (cache_lens > t_max)).any()):
            fail(op, f"cache_lens {cache_lens.tolist()} must lie in [{t_q}, {t_max}]: the {t_q} new "
                     f"positions are the last of each sequence, and the cache holds {t_max}")

# -- quant_matmul --
