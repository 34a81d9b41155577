"""CUDA decode attention (flash-decoding): a few new queries per sequence against a KV cache.

The kernels are in csrc/decode_attention.cu (its header comment explains the split along the
cache and the merge); this file checks the inputs and registers the op with torch.library, so
it runs under torch.compile too. Inference only: no autograd.

    pytest tests/test_cuda_decode_attention.py          # against the float64 reference (GPU)
"""

import torch

from ..checks import CUDA_DECODE_HEAD_DIMS, check_decode_attention, kernel_device, softmax_scale
from . import load

OP = "decode_attention (cuda)"  # how input errors name the op


@torch.library.custom_op("mini_llm::cuda_decode_attention", mutates_args=())
def _decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor,
                      scale: float, num_splits: int) -> torch.Tensor:
    out = torch.empty_like(q)
    load().decode_attention(q, k_cache, v_cache, cache_lens, out, scale, num_splits,
                            torch.cuda.current_stream(q.device).cuda_stream)
    return out


@_decode_attention.register_fake
def _(q, k_cache, v_cache, cache_lens, scale, num_splits):
    return torch.empty_like(q)


def decode_attention(q, k_cache, v_cache, cache_lens, scale=None, longest=None, *, num_splits=None):
    """softmax(scale * q k^T + causal mask) v per sequence, as mini_llm.ops.reference.decode_attention.

    q: (B, nh, Tq, hs), the newest Tq positions of each sequence (any strides); k_cache, v_cache:
    (B, nkv, Tmax, hs) contiguous, nh % nkv == 0, hs in CUDA_DECODE_HEAD_DIMS
    (mini_llm/ops/checks.py); cache_lens: (B,) int32, each sequence's filled length counting the
    Tq new positions. num_splits (for tests and tuning): None cuts each cache so the GPU is
    full, n >= 1 into at most n pieces. Returns (B, nh, Tq, hs)
    in q's dtype. longest: the longest of cache_lens if known on the host (no read-back then;
    the kernel plans its splits from Tmax either way).
    """
    kernel_device(OP, q, interpreted_ok=False)
    check_decode_attention(OP, q, k_cache, v_cache, cache_lens, CUDA_DECODE_HEAD_DIMS, longest, num_splits)
    return _decode_attention(q.contiguous(), k_cache, v_cache, cache_lens, softmax_scale(OP, q.size(-1), scale),
                             num_splits or 0)  # the binding's 0: automatic
