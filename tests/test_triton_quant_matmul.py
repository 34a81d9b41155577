"""The Triton quant_matmul (kernels/quant_matmul.py) against the float64 reference: both kernel
shapes (GEMV-shaped for M <= 16, with its CUDA-core rows M <= 2 and tensor-core tile; tiled for
M > 16), split K, int8 and int4 with groups of 32/64/128, fp32/bf16/fp16 activations, odd N, K
a multiple of the group but not of the block; input checks; the torch.library registration.
On CPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
the `gpu` tests add the big grid (M up to 2048, K = N = 4096 / 8192) and torch.compile.
Run: python -m pytest -q tests/test_triton_quant_matmul.py
"""

import pytest
import torch

from kernel_check import DEVICE, assert_matches
from mini_llm import ops
from mini_llm.errors import KernelInputError
from mini_llm.ops import reference
from mini_llm.ops.quant_format import quantize

qm = pytest.importorskip("mini_llm.kernels.quant_matmul")

# (bits, group size or None for int8's per-channel, K): under the interpreter a block holds
# 256 k, so every K here ends in a partial block (and int8's K = 300 in a partial row of k).
FORMATS = {"int8": (8, None, 300), "int4g32": (4, 32, 96), "int4g64": (4, 64, 320), "int4g128": (4, 128, 384)}
N_ODD = 37


def make(M, N, K, bits, group_size, dtype, device=DEVICE, lead=()):
    """x (*lead, M, K) in dtype and a quantized (N, K) weight, on device; returns the kernel's
    group_size argument too (K for int8)."""
    w = torch.randn(N, K) * torch.logspace(-2, 0, N)[:, None]  # rows of different scales
    qweight, scales = quantize(w, bits, group_size)
    x = torch.randn(*lead, M, K).to(dtype)
    return x.to(device), qweight.to(device), scales.to(device), group_size or K


def check(x, qweight, scales, group_size, **kw):
    got = qm.quant_matmul(x, qweight, scales, group_size, **kw)
    want = reference.quant_matmul(x.double(), qweight, scales, group_size)  # float64
    assert got.dtype == x.dtype and got.shape == want.shape
    assert_matches(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M", [1, 2, 3, 16, 33])
def test_matches_reference(M, fmt, dtype):
    bits, group_size, K = FORMATS[fmt]
    check(*make(M, N_ODD, K, bits, group_size, dtype))


@pytest.mark.parametrize("M, split_k", [(1, 2), (3, 3), (16, 2), (33, 2)])
@pytest.mark.parametrize("fmt", ["int8", "int4g128"])
def test_split_k(M, split_k, fmt):
    """K split across programs whose fp32 partials meet by atomic adds; with K = 384 / 300 (2
    blocks) and 3 splits, one split has no block at all and must add nothing."""
    bits, group_size, K = FORMATS[fmt]
    check(*make(M, N_ODD, K, bits, group_size, torch.bfloat16), split_k=split_k)


@pytest.mark.parametrize("fmt", ["int8", "int4g64"])
def test_fp16_and_leading_dims(fmt):
    bits, group_size, K = FORMATS[fmt]
    check(*make(3, 20, K, bits, group_size, torch.float16, lead=(2,)))  # (2, 3, K): 6 rows
    x, qweight, scales, g = make(1, 20, K, bits, group_size, torch.float16)
    check(x[0], qweight, scales, g)  # 1-D x (K,) -> (N,)


def test_strided_rows_and_no_rows():
    x, qweight, scales, g = make(5, 21, 320, 4, 64, torch.float32)
    wide = torch.randn(5, 400, device=DEVICE)
    wide[:, :320] = x
    check(wide[:, :320], qweight, scales, g)  # rows 400 apart
    check(x.t().contiguous().t(), qweight, scales, g)  # column-major: copied to rows
    empty = qm.quant_matmul(x[:0], qweight, scales, g)
    assert empty.shape == (0, 21) and empty.dtype == x.dtype


def test_plan_split_k():
    cpu = torch.device("cpu")  # counted as a 4-SM device
    assert qm.plan_split_k(1, 4096, 4096, cpu) == 1  # N fills it
    assert qm.plan_split_k(1, 16, 4096, cpu) == 4  # one N tile: split up to the SMs
    assert qm.plan_split_k(1, 16, 1024, cpu) == 2  # ... keeping >= 512 k per split
    assert qm.plan_split_k(17, 16, 4096, cpu) == 1  # M tiles fill the GPU
    check(*make(1, 16, 1024, 8, None, torch.bfloat16))  # planned inside the op: 2 splits here


def test_registry_and_op_registration():
    x, qweight, scales, g = make(3, N_ODD, 320, 4, 64, torch.float32)
    with ops.use_kernels("quant_matmul=triton"):
        assert_matches(ops.quant_matmul(x, qweight, scales, g),
                       reference.quant_matmul(x.double(), qweight, scales, g))
    utils = ["test_schema", "test_faketensor"]
    if DEVICE == "cuda":  # the interpreter cannot run on fake tensors: AOT tracing is GPU only
        utils.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.mini_llm.triton_quant_matmul, (x, qweight, scales, g, 1), test_utils=utils)


def _bad_inputs():
    """(call, message fragment): each must raise KernelInputError before any launch."""
    x, q4, s4, _ = make(2, 8, 128, 4, 32, torch.float32)
    _, q8, s8, _ = make(2, 8, 128, 8, None, torch.float32)
    f = qm.quant_matmul
    return [
        (lambda: f(x.int(), q8, s8, 128), "x has dtype torch.int32"),
        (lambda: f(x.double(), q8, s8, 128), "x has dtype torch.float64"),
        (lambda: f(x, q8.int(), s8, 128), "qweight has dtype torch.int32"),
        (lambda: f(x, q8, s8.float(), 128), "scales has dtype torch.float32"),
        (lambda: f(x, q8, s8[:, 0], 128), "scales must have 2 dimensions"),
        (lambda: f(x[:, :96], q8, s8, 128), r"x \(2, 96\) has K = 96 but the weight has K = 128"),
        (lambda: f(x, q8, s8, 64), "group_size must be K = 128"),
        (lambda: f(x, q4, s4, 48), "int4 group_size 48 is not supported"),
        (lambda: f(x[:, :96], q4[:, :48].contiguous(), s4[:, :3].contiguous(), 64),
         "group_size 64 does not divide K = 96"),
        (lambda: f(x, q4, s4, 64), r"scales \(8, 4\) do not match .* expected \(8, 2\)"),
        (lambda: f(x, q8.t().contiguous().t(), s8, 128), "qweight must be contiguous"),
        (lambda: f(torch.randn(()), q8, s8, 128), "at least one dimension"),
        (lambda: f(x, q8, s8, 128, split_k=0), "split_k must be a positive int"),
        (lambda: f(x, q8, s8.to("meta"), 128), "scales is on meta"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_inputs_raise(case):
    call, message = _bad_inputs()[case]
    with pytest.raises(KernelInputError, match=message):
        call()


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors are valid only in the interpreter")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read by the check at call time
    x, qweight, scales, g = make(2, 8, 128, 8, None, torch.float32)
    with pytest.raises(KernelInputError, match=r"quant_matmul \(triton\): inputs must be CUDA tensors"):
        qm.quant_matmul(x, qweight, scales, g)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("fmt", [(8, None), (4, 32), (4, 64), (4, 128)], ids=["int8", "int4g32", "int4g64", "int4g128"])
@pytest.mark.parametrize("K", [4096, 8192])
@pytest.mark.parametrize("M", [1, 2, 5, 16, 17, 128, 2048])
def test_gpu_grid(M, K, fmt, dtype):
    check(*make(M, K, K, *fmt, dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("N, K, M", [(1000, 1536, 1), (384, 1536, 7), (4097, 4096, 300)])
def test_gpu_odd_shapes_and_default_split(N, K, M):
    """Small N: the default plan splits K across the GPU's SMs; odd N; M just past a tile."""
    check(*make(M, N, K, 4, 64, torch.bfloat16))
    check(*make(M, N, K, 8, None, torch.bfloat16))


@pytest.mark.gpu
def test_gpu_compile():
    """torch.compile traces through the triton_op and agrees with eager."""
    x, qweight, scales, g = make(16, 1024, 1024, 4, 64, torch.bfloat16, lead=(2,))
    compiled = torch.compile(lambda a: qm.quant_matmul(a, qweight, scales, g) * 2, fullgraph=True)(x)
    assert_matches(compiled, 2 * reference.quant_matmul(x.double(), qweight, scales, g))
