"""Weight-only quantization (the format: mini_llm/ops/quant_format.py; modules and models:
mini_llm/ops/quant_format.py) and the reference / torch quant_matmul: the format's error bound element by
element, int4 packing, all-zero rows and groups, tiny and float16-rounded scales,
QuantizedLinear against nn.Linear, quantize_model with a save / load round trip that gives
identical logits, and every error a user can hit.
Run: python -m pytest -q tests/test_quant.py   (CPU, a few seconds)
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernel_check import assert_matches
from mini_llm import ops
from mini_llm.errors import CheckpointError, ConfigError, KernelInputError
from mini_llm.model import GPT, GPTConfig
from mini_llm.ops import reference, torch_ops
from mini_llm.ops.quant_format import QMAX, dequantize, pack_int4, quantize, unpack_int4
from mini_llm.quant import QuantizedLinear, load_quantized, quantize_model, save_quantized
from mini_llm.checkpoint import save_checkpoint

FORMATS = [(8, None), (4, 32), (4, 64), (4, 128)]
FORMAT_IDS = ["int8", "int4g32", "int4g64", "int4g128"]


def weight(N, K):
    """Rows on very different scales (1e-6 .. 10), as trained layers have: every scale must be
    right, including ones far down in float16's subnormal range."""
    return torch.randn(N, K) * torch.logspace(-6, 1, N)[:, None]


def group_scales(scales, group_size):
    """(N, K) float64: the scale each element was quantized with."""
    return scales.double().repeat_interleave(group_size, dim=1)


@pytest.mark.parametrize("bits, group_size", FORMATS, ids=FORMAT_IDS)
def test_round_trip_within_half_a_step(bits, group_size):
    N, K = 9, 384
    w = weight(N, K)
    qweight, scales = quantize(w, bits, group_size)
    g = group_size or K
    assert qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert qweight.shape == (N, K if bits == 8 else K // 2)
    assert scales.dtype == torch.float16 and scales.shape == (N, K // g)
    q = qweight if bits == 8 else unpack_int4(qweight)
    assert q.abs().max() <= QMAX[bits]
    s = group_scales(scales, g)
    assert (s > 0).all()
    error = (w.double() - dequantize(qweight, scales, g).double()).abs()
    assert (error <= s / 2 * (1 + 1e-6)).all(), (error / s).max()
    # each scale is the float16 at or just above absmax / qmax: never below (q would clip),
    # at most one float16 step above (relative 2^-10, or 2^-24 among the subnormals)
    ideal = w.abs().reshape(N, K // g, g).amax(-1).double() / QMAX[bits]
    assert (scales.double() >= ideal).all()
    assert (scales.double() <= torch.maximum(ideal * (1 + 2**-10), ideal + 2**-24)).all()


def test_int4_byte_layout_and_pack_round_trip():
    # byte j of a row: k = 2j in the low nibble, k = 2j + 1 in the high one, each stored as q + 8
    q = torch.tensor([[1, -2, 7, -7], [0, 0, -1, 3]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0x69, 0x1F], [0x88, 0xB7]]
    random_q = torch.randint(-7, 8, (5, 38), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(random_q)), random_q)


@pytest.mark.parametrize("bits, group_size", FORMATS, ids=FORMAT_IDS)
def test_zero_rows_and_groups_dequantize_to_exact_zeros(bits, group_size):
    w = torch.randn(4, 256)
    w[1] = 0.0
    w[2, :128] = 0.0  # a whole group for int4
    qweight, scales = quantize(w, bits, group_size)
    assert torch.isfinite(scales).all() and (scales > 0).all()
    deq = dequantize(qweight, scales, group_size or 256)
    assert torch.equal(deq[1], torch.zeros(256))
    if bits == 4:
        assert torch.equal(deq[2, :128], torch.zeros(128))
    assert not torch.isnan(deq).any()


@pytest.mark.parametrize("op", [reference.quant_matmul, torch_ops.quant_matmul], ids=["reference", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bits, group_size", FORMATS, ids=FORMAT_IDS)
def test_quant_matmul_is_x_times_dequantized_weight(op, dtype, bits, group_size):
    N, K = 19, 256
    qweight, scales = quantize(torch.randn(N, K), bits, group_size)
    g = group_size or K
    x = torch.randn(2, 3, K).to(dtype)
    got = op(x, qweight, scales, g)
    want = x.double() @ dequantize(qweight, scales, g).double().T
    assert got.shape == (2, 3, N)
    assert_matches(got, want)


def test_quantized_linear_against_nn_linear():
    torch.manual_seed(1)
    linear = nn.Linear(256, 48)
    x = torch.randn(5, 7, 256)
    exact = linear(x)
    for bits, group_size, close in ((8, None, 0.01), (4, 32, 0.15)):
        q = QuantizedLinear.from_linear(linear, bits, group_size)
        assert [name for name, _ in q.named_parameters()] == []  # buffers only: inference
        assert set(q.state_dict()) == {"qweight", "scales", "bias"}
        y = q(x)
        # exactly nn.Linear with the dequantized weight ...
        w = dequantize(q.qweight, q.scales, q.group_size)
        assert_matches(y, F.linear(x.double(), w.double(), linear.bias.double()))
        # ... and close to the original layer
        assert (y - exact).norm() / exact.norm() < close
    no_bias = QuantizedLinear.from_linear(nn.Linear(64, 8, bias=False), 4, 64)
    assert no_bias.bias is None and no_bias(torch.randn(3, 64)).shape == (3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # like nn.Linear: autocast's dtype out
        assert q(x).dtype == linear(x).dtype == torch.bfloat16


def tiny_gpt(n_embd=64, **kw):
    config = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=n_embd, **kw)
    return GPT(config).eval()


LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)


def meta_for(model):
    return {"iter": 7, "model_config": model.config.to_dict(), "tokenizer": {"kind": "char", "chars": "ab"},
            "train_config": {}}


@pytest.mark.parametrize("style, bits, group_size, width", [("gpt2", 8, None, 64), ("gpt2", 4, 128, 128),
                                                              ("llama", 4, 32, 64)])
def test_quantize_model_and_save_load_round_trip(tmp_path, style, bits, group_size, width):
    model = tiny_gpt(width, **(LLAMA if style == "llama" else dict(bias=True)))
    idx = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        before, _ = model(idx)
    wte = model.wte.weight.clone()
    summary = quantize_model(model, bits, group_size)
    assert summary.layers == 2 * 4 and summary.bits == bits and summary.group_size == group_size
    assert summary.bytes_after < summary.bytes_before and "int" in str(summary)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == []  # every block linear replaced (tied head: no lm_head module)
    assert isinstance(model.wte, nn.Embedding) and torch.equal(model.wte.weight, wte)
    with torch.no_grad():
        after, _ = model(idx)
    assert (after - before).norm() / before.norm() < (0.02 if bits == 8 else 0.2)

    path = tmp_path / "quant.safetensors"
    save_quantized(path, model, meta_for(model))
    loaded, ckpt = load_quantized(path)
    assert ckpt.meta["quantization"] == {"bits": bits, "group_size": group_size}
    assert ckpt.meta["iter"] == 7 and loaded.quantization == model.quantization
    with torch.no_grad():
        again, _ = loaded(idx)
    assert torch.equal(again, after)


def test_dtype_moves_keep_scales_float16():
    model = tiny_gpt()
    quantize_model(model, 4, 64)
    layer = model.h[0].attn.c_attn
    scales = layer.scales.clone()
    model.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16 and torch.equal(layer.scales, scales)
    assert layer.qweight.dtype == torch.uint8
    logits, _ = model(torch.randint(0, 65, (1, 5)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_model_runs_through_the_selected_backend():
    model = tiny_gpt()
    quantize_model(model, 8)
    idx = torch.randint(0, 65, (1, 9))
    with torch.no_grad(), ops.use_kernels("reference"):
        ref, _ = model(idx)
    with torch.no_grad():
        base, _ = model(idx)  # torch backend (tests/conftest.py)
    assert_matches(base, ref.double())


QUANTIZE_ERRORS = [
    (lambda: quantize(torch.randn(4, 64), 3), ConfigError, "cannot quantize to 3 bits"),
    (lambda: quantize(torch.randn(4, 63), 4, 32), ConfigError, "K must be even"),
    (lambda: quantize(torch.randn(4, 64), 4, 48), ConfigError, "group_size 48 is not supported"),
    (lambda: quantize(torch.randn(4, 96), 4, 64), ConfigError, "group_size 64 does not divide K = 96"),
    (lambda: quantize(torch.randn(4, 96), 8, 32), ConfigError, "one scale per output channel"),
    (lambda: quantize(torch.randn(96), 8), ConfigError, r"float \(N, K\) weight"),
    (lambda: quantize(torch.full((2, 64), float("nan")), 8), ConfigError, "inf or NaN"),
    (lambda: quantize(torch.full((2, 64), 1e7), 4, 64), ConfigError, "too large for float16 scales"),
    (lambda: pack_int4(torch.zeros(2, 5, dtype=torch.int8)), ConfigError, "K even"),
]


def _bad_packed():
    q4, s4 = quantize(torch.randn(6, 128), 4, 32)  # (6, 64) bytes, (6, 4) scales
    q8, s8 = quantize(torch.randn(6, 128), 8)
    return [
        (lambda: dequantize(q4, s4, 64), KernelInputError, r"scales \(6, 4\) do not match .* expected \(6, 2\)"),
        (lambda: dequantize(q4[:, :48].contiguous(), s4, 32), KernelInputError, r"expected \(6, 3\)"),
        (lambda: dequantize(q4[:, :60].contiguous(), s4, 32), KernelInputError,
         "group_size 32 does not divide K = 120"),
        (lambda: dequantize(q4, s4, 16), KernelInputError, "int4 group_size 16 is not supported"),
        (lambda: dequantize(q8, s8, 64), KernelInputError, "group_size must be K = 128"),
        (lambda: dequantize(q8, s8.float(), 128), KernelInputError, "scales has dtype torch.float32"),
        (lambda: dequantize(q8.int(), s8, 128), KernelInputError, "qweight has dtype torch.int32"),
        (lambda: reference.quant_matmul(torch.randn(2, 128), q4, s4[:5], 32), KernelInputError, "do not match"),
    ]


@pytest.mark.parametrize("case", range(len(QUANTIZE_ERRORS) + len(_bad_packed())))
def test_errors(case):
    call, error, message = (QUANTIZE_ERRORS + _bad_packed())[case]
    with pytest.raises(error, match=message):
        call()


def test_model_errors(tmp_path):
    model = tiny_gpt(256, **LLAMA)  # SwiGLU hidden 704: groups of 128 fit K = 256 but not 704
    with pytest.raises(ConfigError, match=r"h\.0\.mlp\.c_proj \(256 x 704\): group_size 128 does not divide"):
        quantize_model(model, 4, 128)
    assert isinstance(model.h[0].attn.c_attn, nn.Linear)  # an error leaves the model as it was
    with pytest.raises(ConfigError, match="not quantized"):
        save_quantized(tmp_path / "q.safetensors", model, meta_for(model))
    save_checkpoint(tmp_path / "full.safetensors", model, None, meta_for(model))
    with pytest.raises(CheckpointError, match="full-precision weights"):
        load_quantized(tmp_path / "full.safetensors")
    quantize_model(model, 4, 64)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, 8)
