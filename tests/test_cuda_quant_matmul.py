"""The CUDA weight-only quantized matmul (csrc/quant_matmul.cu through
mini_llm/ops/cuda/quant_matmul.py) against the float64 reference (dequantize, then matmul).

`gpu` tests (skipped without CUDA) run the kernels: int8 per channel and int4 with groups of
32 / 64 / 128; x in fp32 / fp16 / bf16; M = 1, 3, 16 (GEMV kernel) and 17, 2048 (tiled: tensor
cores for fp16 / bf16, FMA tiles for fp32) with N odd; each path forced on the other's shapes
(GEMV over several 16-row slices, tiled with a single row); K that leaves a partial k-tile, int8
rows that are not 16-byte aligned and a qweight that does not start 16-byte aligned (byte-load
and plain-FMA fallbacks); shapes the GEMV cuts along K (split-K partial sums); every output
element written (NaN-poisoned out); batched, strided and empty x; torch.compile; the binding's
checks on GPU tensors. Unmarked tests: the wrapper's KernelInputError for CPU tensors, and the
binding's own errors for CPU tensors, dtypes, shapes, group sizes and paths (the `cuda_ext`
fixture builds the extension where nvcc is, skips otherwise).

    python -m pytest -q tests/test_cuda_quant_matmul.py
"""

import pytest
import torch

from kernel_check import assert_matches, poisoned
from mini_llm.errors import KernelInputError
from mini_llm.ops import reference
from mini_llm.ops.cuda import quant_matmul as cuda_qm
from mini_llm.ops.quant_format import quantize

gpu = pytest.mark.gpu
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FORMATS = {"int8": (8, None), "int4-g32": (4, 32), "int4-g64": (4, 64), "int4-g128": (4, 128)}


def make_inputs(x_shape, N, K, fmt, dtype, device="cuda"):
    """x (*x_shape, K) in dtype; a random (N, K) weight quantized in format `fmt`."""
    bits, group_size = FORMATS[fmt]
    x = torch.randn(*x_shape, K, device=device).to(dtype)
    qweight, scales = quantize(torch.randn(N, K, device=device), bits, group_size)
    return x, qweight, scales, K if bits == 8 else group_size


def expected(x, qweight, scales, group_size):
    return reference.quant_matmul(x.double(), qweight, scales, group_size)


def check(x, qweight, scales, group_size, path="auto"):
    got = cuda_qm.quant_matmul(x, qweight, scales, group_size, path=path)
    assert got.shape == (*x.shape[:-1], qweight.shape[0]) and got.dtype == x.dtype
    assert_matches(got, expected(x, qweight, scales, group_size))


@gpu
@pytest.mark.parametrize("M", [1, 3, 16, 17, 2048])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_reference(fmt, dtype, M):
    check(*make_inputs((M,), 131, 384, fmt, DTYPES[dtype]))


@gpu
@pytest.mark.parametrize("path,M", [("gemv", 17), ("gemv", 40), ("gemv", 130), ("tiled", 1), ("tiled", 3)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["int8", "int4-g64"])
def test_forced_path(fmt, dtype, path, M):
    check(*make_inputs((M,), 77, 256, fmt, DTYPES[dtype]), path=path)


@gpu
@pytest.mark.parametrize("M", [1, 5, 17, 130])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt,K", [("int8", 200), ("int8", 40), ("int8", 72), ("int4-g32", 96), ("int4-g64", 320)])
def test_tails_along_k(fmt, K, dtype, M):
    """int8 K = 200 / 40 / 72: rows of K bytes, not 16-byte aligned (byte loads, FMA tiles);
    int4 K = 96 / 320: the last 64-wide k-tile is half full."""
    check(*make_inputs((M,), 45, K, fmt, DTYPES[dtype]))


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K,fmt", [(1, 64, 8192, "int4-g32"), (5, 24, 8192, "int4-g128"), (16, 70, 4096, "int8"),
                                       (9, 300, 4096, "int4-g64"), (2, 16, 12288, "int8")])
def test_split_k(M, N, K, fmt, dtype):
    """Few output rows and many k: the GEMV kernel cuts K across blocks and sums the float32
    partial sums in a second kernel."""
    check(*make_inputs((M,), N, K, fmt, DTYPES[dtype]))


@gpu
@pytest.mark.parametrize("M", [1, 17, 130])
@pytest.mark.parametrize("fmt", ["int8", "int4-g32"])
def test_misaligned_qweight(fmt, M):
    """A qweight whose data starts one byte into its storage: no 128-bit loads or cp.async."""
    x, qweight, scales, group_size = make_inputs((M,), 33, 256, fmt, torch.bfloat16)
    storage = torch.empty(qweight.numel() + 1, dtype=qweight.dtype, device="cuda")
    shifted = storage[1:].view(qweight.shape)
    shifted.copy_(qweight)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 == 1
    check(x, shifted, scales, group_size)


@gpu
@pytest.mark.parametrize("path,M", [("gemv", 1), ("gemv", 16), ("gemv", 21), ("tiled", 17), ("tiled", 130)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["int8", "int4-g128"])
def test_every_element_written(fmt, dtype, path, M):
    """The binding on a NaN-poisoned out: an element no block writes stays NaN and fails."""
    x, qweight, scales, group_size = make_inputs((M,), 141, 1024, fmt, DTYPES[dtype])
    out = poisoned((M, 141), x.dtype, device="cuda")
    cuda_qm.load().quant_matmul(x, qweight, scales, group_size, out, path, torch.cuda.current_stream().cuda_stream)
    assert_matches(out, expected(x, qweight, scales, group_size))


@gpu
@pytest.mark.parametrize("fmt", ["int8", "int4-g32"])
def test_batched_and_strided_x(fmt):
    """x (B, T, K) as a transposed view, and (B, 1, K) for decode: any leading dims, any strides."""
    _, qweight, scales, group_size = make_inputs((1,), 50, 256, fmt, torch.bfloat16)
    x = torch.randn(2, 256, 7, device="cuda").to(torch.bfloat16).transpose(1, 2)  # (2, 7, 256), strided
    assert not x.is_contiguous()
    check(x, qweight, scales, group_size)
    check(x[:, :1], qweight, scales, group_size)


@gpu
def test_empty_x():
    x, qweight, scales, group_size = make_inputs((0,), 50, 256, "int4-g64", torch.float16)
    got = cuda_qm.quant_matmul(x, qweight, scales, group_size)
    assert got.shape == (0, 50) and got.dtype == torch.float16


@gpu
@pytest.mark.parametrize("M", [1, 40])
def test_torch_compile(M):
    x, qweight, scales, group_size = make_inputs((M,), 96, 256, "int4-g32", torch.bfloat16)
    compiled = torch.compile(lambda a: cuda_qm.quant_matmul(a, qweight, scales, group_size) * 2, fullgraph=True)
    assert_matches(compiled(x), 2 * expected(x, qweight, scales, group_size))


@gpu
def test_binding_checks_gpu_tensors():
    x, qweight, scales, group_size = make_inputs((3,), 40, 256, "int8", torch.float16)
    out = torch.empty(3, 40, dtype=torch.float16, device="cuda")
    ext, stream = cuda_qm.load(), torch.cuda.current_stream().cuda_stream
    with pytest.raises(RuntimeError, match="qweight must be contiguous"):
        ext.quant_matmul(x, qweight.t().contiguous().t(), scales, group_size, out, "auto", stream)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ext.quant_matmul(torch.randn(256, 3, device="cuda").half().t(), qweight, scales, group_size, out, "auto", stream)
    with pytest.raises(RuntimeError, match="scales must be a CUDA tensor"):
        ext.quant_matmul(x, qweight, scales.cpu(), group_size, out, "auto", stream)


# -- no GPU needed --

def cpu_inputs(fmt="int8", N=8, K=64, M=2):
    bits, group_size = FORMATS[fmt]
    qweight, scales = quantize(torch.randn(N, K), bits, group_size)
    return torch.randn(M, K), qweight, scales, K if bits == 8 else group_size


def test_wrapper_rejects_cpu_tensors():
    x, qweight, scales, group_size = cpu_inputs()
    with pytest.raises(KernelInputError, match="quant_matmul \\(cuda\\): inputs must be CUDA tensors, got one on cpu"):
        cuda_qm.quant_matmul(x, qweight, scales, group_size)


def test_binding_rejects_cpu_tensors(cuda_ext):
    for fmt in ("int8", "int4-g32"):
        x, qweight, scales, group_size = cpu_inputs(fmt)
        out = torch.empty(2, 8)
        with pytest.raises(RuntimeError, match="x must be a CUDA tensor, got one on cpu"):
            cuda_ext.quant_matmul(x, qweight, scales, group_size, out, "auto", 0)


def _bad(name):
    """(name, change to the valid CPU inputs (x, qweight, scales, group_size, out, path), message)."""
    return {
        "x's K": (lambda a: {**a, "x": torch.randn(2, 65)}, r"x \[2, 65\] has K = 65 but qweight \[8, 64\]"),
        "int4 K": (lambda a: {**a, "x": torch.randn(2, 64), "qweight": a["qweight"][:, :16].contiguous()},
                   r"has K = 64 but qweight \[8, 16\] \(4-bit\) holds K = 32"),
        "scales rows": (lambda a: {**a, "scales": a["scales"][:4].contiguous()}, "scales .* do not match qweight"),
        "int4 scales": (lambda a: {**a, "scales": a["scales"][:, :1].contiguous()},
                        r"scales \[8, 1\] do not match .* expected \(8, 2\)"),
        "int4 group 16": (lambda a: {**a, "group_size": 16},
                          "int4 group_size must be one of 32, 64, 128 and divide K = 64"),
        "int4 group 128 > K": (lambda a: {**a, "group_size": 128},
                               "int4 group_size must be one of 32, 64, 128 and divide"),
        "int8 group": (lambda a: {**a, "group_size": 32}, "one scale per output channel: group_size must be K = 64"),
        "qweight dtype": (lambda a: {**a, "qweight": a["qweight"].float()}, "qweight must be int8 .* or uint8"),
        "scales dtype": (lambda a: {**a, "scales": a["scales"].float()}, "scales must be float16, got Float"),
        "x dtype": (lambda a: {**a, "x": a["x"].double()}, "x must be float32, float16 or bfloat16"),
        "out shape": (lambda a: {**a, "out": torch.empty(2, 9)}, r"out must have shape \[2, 8\], got \[2, 9\]"),
        "out dtype": (lambda a: {**a, "out": torch.empty(2, 8, dtype=torch.float16)}, "out must have x's dtype"),
        "path": (lambda a: {**a, "path": "fast"}, 'path must be "auto", "gemv" or "tiled", got "fast"'),
    }[name]


@pytest.mark.parametrize("name", ["x's K", "int4 K", "scales rows", "int4 scales", "int4 group 16",
                                  "int4 group 128 > K", "int8 group", "qweight dtype", "scales dtype", "x dtype",
                                  "out shape", "out dtype", "path"])
def test_binding_rejects_bad_inputs(cuda_ext, name):
    change, message = _bad(name)
    fmt = "int4-g32" if name.startswith("int4") else "int8"
    x, qweight, scales, group_size = cpu_inputs(fmt)
    args = change({"x": x, "qweight": qweight, "scales": scales, "group_size": group_size, "out": torch.empty(2, 8),
                   "path": "auto"})
    with pytest.raises(RuntimeError, match=message):
        cuda_ext.quant_matmul(*args.values(), 0)
