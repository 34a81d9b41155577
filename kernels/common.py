"""What every Triton kernel file here shares: whether Triton runs interpreted, the matrix
product in fp32 (with the interpreter's bf16 fix), the dot precision per dtype, the SM count
that sizes split grids, and log2(e) for kernels that keep scores in base 2."""

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # exp(x) == exp2(x * LOG2E): exp2 is the GPU's native instruction
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU runs the kernels (tests)
INTERPRETED_JIT = tl.constexpr(INTERPRETED)  # the same, readable inside kernels


def dot_precision(dtype):
    """fp32 inputs multiply exactly ("ieee", CUDA cores) so fp32 matches the reference at ~1e-5;
    bf16/fp16 go to the tensor cores (the argument only matters for fp32 inputs)."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr):
    """acc + a @ b, accumulated in fp32 (acc None: a @ b)."""
    if INTERPRETED_JIT:
        # The interpreter multiplies bf16's raw uint16 bit patterns in tl.dot (Triton 3.9,
        # triton-lang/triton#11584). Products of bf16 values are exact in fp32, so widening
        # first gives what the tensor cores give.
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@functools.lru_cache(maxsize=None)
def sm_count(device_index):
    """Streaming multiprocessors of a CUDA device: what grids that split work aim to fill."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count
