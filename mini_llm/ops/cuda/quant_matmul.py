"""CUDA weight-only quantized matmul: x @ W.T with W stored int8 per output channel or int4
group-wise (format: mini_llm/ops/quant_format.py), dequantized in registers, never in memory.

The kernels are in csrc/quant_matmul.cu (its header comment explains the GEMV path for M <= 16,
the tensor-core tiled path above, and the dequantization tricks); this file checks the inputs
and registers the op with torch.library, so it runs under torch.compile too. Inference only: no
autograd.

    python -m pytest -q tests/test_cuda_quant_matmul.py      # against the float64 reference (GPU)
"""

import torch

from ..checks import check_quant_matmul, fail, kernel_device
from . import load

OP = "quant_matmul (cuda)"
PATHS = ("auto", "gemv", "tiled")


@torch.library.custom_op("mini_llm::cuda_quant_matmul", mutates_args=())
def _quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                  path: str) -> torch.Tensor:
    out = x.new_empty((*x.shape[:-1], qweight.shape[0]))
    load().quant_matmul(x, qweight, scales, group_size, out, path, torch.cuda.current_stream(x.device).cuda_stream)
    return out


@_quant_matmul.register_fake
def _(x, qweight, scales, group_size, path):
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def quant_matmul(x, qweight, scales, group_size, *, path="auto"):
    """x (..., K) @ W.T -> (..., N) in x's dtype, as mini_llm.ops.reference.quant_matmul.

    x: float32 / float16 / bfloat16, any strides; qweight int8 (N, K) with float16 scales (N, 1)
    and group_size == K, or uint8 (N, K // 2) (two int4 per byte) with float16 scales
    (N, K // group_size), group_size 32, 64 or 128. path (for tests and benchmarks): "auto" (the
    GEMV kernel for at most 16 rows of x, the tiled one above), "gemv" or "tiled".
    """
    kernel_device(OP, x, interpreted_ok=False)
    check_quant_matmul(OP, x, qweight, scales, group_size)
    if path not in PATHS:
        fail(OP, f"path must be one of {', '.join(PATHS)}, got {path!r}")
    return _quant_matmul(x.contiguous(), qweight, scales, int(group_size), path)
