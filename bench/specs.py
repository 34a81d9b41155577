"""What each op costs at least: inputs, shapes, the fewest bytes it must move and the flops it
must do. Achieved GB/s and TFLOP/s in every row are these counts over the measured time.

Bytes count each input read once and each output written once (the floor a perfect kernel
reaches); flops count multiply-adds as 2. The backward adds its own reads and writes: e.g. a
norm's backward reads x and dy and writes dx (3 tensors of the input's size).
"""

from dataclasses import dataclass, field

import torch

from mini_llm.ops.quant_format import quantize


@dataclass(frozen=True)
class Case:
    op: str
    label: str  # the shape as a person reads it, e.g. "B4 nh6 T256 hs64 causal"
    dims: dict = field(hash=False)


@dataclass(frozen=True)
class OpSpec:
    name: str
    make: callable  # (dims, dtype, device, generator) -> tuple of input tensors
    call: callable  # (fn, inputs, dims) -> output tensor
    bytes: callable  # (dims, element size, backward: bool) -> int
    flops: callable  # (dims, backward: bool) -> int
    shapes: dict  # "quick" / "full" -> list of dims
    differentiable: bool = True  # False: inference ops, timed forward only
    stored: tuple = ()  # indices of inputs in a storage format (quantized weights and their
    #                     scales): the reference reads them as they are, never widened


def rand(shape, dtype, device, generator, scale=1.0):
    # Drawn on the CPU with a seeded generator, so every backend and device sees the same values.
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * scale).to(device, dtype)


def _norm(with_bias, residual=False):
    """A norm's spec; `residual`: the fused add_* variant (inputs x, delta), which also reads
    delta and writes s = x + delta (the bench times and checks its y = norm(s))."""
    def make(d, dtype, device, g):
        x = rand((d["rows"], d["cols"]), dtype, device, g, scale=2.0) + 0.5
        delta = (rand((d["rows"], d["cols"]), dtype, device, g),) if residual else ()
        w = rand((d["cols"],), dtype, device, g) * 0.5 + 1.0
        return (x, *delta, w, rand((d["cols"],), dtype, device, g)) if with_bias else (x, *delta, w)

    def nbytes(d, s, backward):
        params = 2 if with_bias else 1
        rows = 4 if residual else 2  # read x[, delta]; write [s,] y
        fwd = (rows * d["rows"] * d["cols"] + params * d["cols"]) * s  # read x, w[, b]; write y
        bwd = (3 * d["rows"] * d["cols"] + 2 * params * d["cols"]) * s  # x, dy -> dx; dw[, db]
        return fwd + (bwd if backward else 0)

    def flops(d, backward):  # ~8 per element forward (mean, variance, scale, shift), ~2x back
        return 8 * d["rows"] * d["cols"] * (3 if backward else 1)

    return make, nbytes, flops


def _attention_make(d, dtype, device, g):
    shape = (d["B"], d["nh"], d["T"], d["hs"])
    return tuple(rand(shape, dtype, device, g) for _ in range(3))


def _attention_bytes(d, s, backward):
    qkvo = d["B"] * d["nh"] * d["T"] * d["hs"] * s
    # forward: read q, k, v, write o. backward: read q, k, v, o, do; write dq, dk, dv.
    return 4 * qkvo + (8 * qkvo if backward else 0)


def _attention_flops(d, backward):
    # q k^T and p v: 2 matmuls of 2 * T * T * hs each; causal skips half. The backward is
    # counted as FlashAttention counts it, 5 such matmuls (it recomputes p from q k^T), so
    # forward + backward = 3.5x the forward; a kernel that keeps p does 4 in the backward.
    fwd = 4 * d["B"] * d["nh"] * d["T"] ** 2 * d["hs"] * (0.5 if d["causal"] else 1.0)
    return int(fwd * (3.5 if backward else 1.0))


def _decode_make(d, dtype, device, g):
    q = rand((d["B"], d["nh"], d["Tq"], d["hs"]), dtype, device, g)
    k, v = (rand((d["B"], d["nkv"], d["T"], d["hs"]), dtype, device, g) for _ in range(2))
    # Every sequence but the first is full; the first is ragged, so the kernels see mixed lengths.
    lens = torch.full((d["B"],), d["T"], dtype=torch.int32)
    lens[0] = max(d["Tq"], d["T"] - 37)
    return q, k, v, lens.to(device)


def _decode_bytes(d, s, backward):
    kv = 2 * d["B"] * d["nkv"] * d["T"] * d["hs"] * s  # the cache, read once: what bounds the op
    return kv + 2 * d["B"] * d["nh"] * d["Tq"] * d["hs"] * s  # + q in, o out


def _decode_flops(d, backward):
    return 4 * d["B"] * d["nh"] * d["Tq"] * d["T"] * d["hs"]


def _quant_make(d, dtype, device, g):
    x = rand((d["M"], d["K"]), dtype, device, g)
    w = rand((d["N"], d["K"]), torch.float32, "cpu", g, scale=0.02)
    qweight, scales = quantize(w, d["bits"], d["group"])
    return x, qweight.to(device), scales.to(device)


def _quant_bytes(d, s, backward):
    weight = d["N"] * d["K"] * d["bits"] // 8 + d["N"] * (d["K"] // d["group"]) * 2  # + fp16 scales
    return weight + (d["M"] * d["K"] + d["M"] * d["N"]) * s


def _pointwise_make(d, dtype, device, g):
    return (rand((d["n"],), dtype, device, g, scale=3.0),)


def _pointwise_bytes(d, s, backward):
    return (2 + (3 if backward else 0)) * d["n"] * s  # x -> y; then x, dy -> dx


def _cross_entropy_make(d, dtype, device, g):
    logits = rand((d["rows"], d["vocab"]), dtype, device, g, scale=3.0)
    targets = torch.randint(0, d["vocab"], (d["rows"],), generator=g).to(device)
    return logits, targets


def _cross_entropy_bytes(d, s, backward):
    logits = d["rows"] * d["vocab"] * s
    return logits + 8 * d["rows"] + (2 * logits if backward else 0)  # + int64 targets; dlogits


def _label_norm(d):
    return f"{d['rows']}x{d['cols']}"


def _label_attention(d):
    return f"B{d['B']} nh{d['nh']} T{d['T']} hs{d['hs']}{' causal' if d['causal'] else ''}"


def _label_decode(d):
    extra = f" Tq{d['Tq']}" if d["Tq"] > 1 else ""
    return f"B{d['B']} nh{d['nh']}/kv{d['nkv']} cache{d['T']} hs{d['hs']}{extra}"


def _label_quant(d):
    group = f" g{d['group']}" if d["bits"] == 4 else ""
    return f"M{d['M']} K{d['K']} N{d['N']} int{d['bits']}{group}"


def _attn(B, nh, T, hs, causal=True):
    return dict(B=B, nh=nh, T=T, hs=hs, causal=causal)


def _decode(B, nh, nkv, T, hs, Tq=1):
    return dict(B=B, nh=nh, nkv=nkv, T=T, hs=hs, Tq=Tq)


def _quant(M, K, N, bits, group=None):
    return dict(M=M, K=K, N=N, bits=bits, group=group or K)


# quick: model-sized and odd shapes, seconds each even on a CPU. full: the sizes the kernel
# issues set targets at (16384 x 4096 norms, attention at 2k-16k), meant for a GPU. headline:
# the ends of full that the targets name, for the GPU run's minutes (bench/gpu_run.sh; only the
# ops with a target have one).
_norm_shapes = {
    "quick": [dict(rows=16384, cols=384), dict(rows=1000, cols=1001)],
    "full": [dict(rows=16384, cols=384), dict(rows=16384, cols=4096), dict(rows=4096, cols=8192),
             dict(rows=1000, cols=1001)],
    "headline": [dict(rows=16384, cols=4096)],
}
_attention_shapes = {
    "quick": [_attn(8, 6, 256, 64), _attn(2, 4, 200, 32, causal=False)],
    "full": [_attn(B, 16, T, hs, causal) for hs in (64, 128) for causal in (True, False)
             for B, T in ((8, 2048), (4, 4096), (2, 8192), (1, 16384))],
    "headline": [_attn(B, 16, T, hs, causal) for hs in (64, 128) for causal in (True, False)
                 for B, T in ((8, 2048), (1, 16384))],
}
# decode: the model's own shape, and the targets: caches of 4k-16k at batch 1 (one
# sequence must still fill the GPU) to 64, grouped-query (32 query heads over 8 kv heads).
_decode_shapes = {
    "quick": [_decode(4, 6, 6, 256, 64), _decode(3, 8, 2, 1000, 128, Tq=3)],
    "full": [_decode(B, 32, nkv, T, 128) for nkv in (8, 32) for B, T in ((1, 4096), (1, 16384), (8, 8192),
                                                                          (64, 4096))],
    "headline": [_decode(B, 32, 8, T, 128) for B, T in ((1, 4096), (1, 16384), (8, 8192))],
}
_quant_shapes = {
    "quick": [_quant(1, 384, 1152, 8), _quant(16, 384, 1152, 4, 64), _quant(33, 1536, 384, 4, 32)],
    "full": [_quant(M, K, K, bits, group) for K in (4096, 8192) for M in (1, 16, 2048)
             for bits, group in ((8, None), (4, 64), (4, 128))],
}
_pointwise_shapes = {"quick": [dict(n=16384 * 1536), dict(n=1_000_003)],  # the odd one has a tail
                     "full": [dict(n=16384 * 1536), dict(n=1 << 28), dict(n=1_000_003)]}

_layer_norm, _rms_norm = _norm(with_bias=True), _norm(with_bias=False)
_add_layer_norm, _add_rms_norm = _norm(with_bias=True, residual=True), _norm(with_bias=False, residual=True)

SPECS = {
    spec.name: spec
    for spec in [
        OpSpec("layer_norm", _layer_norm[0], lambda f, i, d: f(*i, 1e-5), *_layer_norm[1:], _norm_shapes),
        OpSpec("rms_norm", _rms_norm[0], lambda f, i, d: f(*i, 1e-5), *_rms_norm[1:], _norm_shapes),
        OpSpec("add_layer_norm", _add_layer_norm[0], lambda f, i, d: f(*i, 1e-5)[1], *_add_layer_norm[1:],
               _norm_shapes),
        OpSpec("add_rms_norm", _add_rms_norm[0], lambda f, i, d: f(*i, 1e-5)[1], *_add_rms_norm[1:], _norm_shapes),
        OpSpec("attention", _attention_make, lambda f, i, d: f(*i, d["causal"], None), _attention_bytes,
               _attention_flops, _attention_shapes),
        OpSpec("decode_attention", _decode_make, lambda f, i, d: f(*i, None, d["T"]), _decode_bytes, _decode_flops,
               _decode_shapes, differentiable=False),
        OpSpec("quant_matmul", _quant_make, lambda f, i, d: f(*i, d["group"]), _quant_bytes,
               lambda d, bwd: 2 * d["M"] * d["N"] * d["K"], _quant_shapes, differentiable=False, stored=(1, 2)),
        OpSpec("gelu", _pointwise_make, lambda f, i, d: f(*i), _pointwise_bytes,
               lambda d, bwd: 10 * d["n"] * (3 if bwd else 1), _pointwise_shapes),
        OpSpec("silu", _pointwise_make, lambda f, i, d: f(*i), _pointwise_bytes,
               lambda d, bwd: 5 * d["n"] * (3 if bwd else 1), _pointwise_shapes),
        OpSpec("cross_entropy", _cross_entropy_make, lambda f, i, d: f(*i, -1), _cross_entropy_bytes,
               lambda d, bwd: 5 * d["rows"] * d["vocab"] * (2 if bwd else 1),
               {"quick": [dict(rows=16384, vocab=65)],
                "full": [dict(rows=16384, vocab=65), dict(rows=8192, vocab=50304)]}),
    ]
}

LABELS = {"layer_norm": _label_norm, "rms_norm": _label_norm, "add_layer_norm": _label_norm,
          "add_rms_norm": _label_norm, "attention": _label_attention,
          "decode_attention": _label_decode, "quant_matmul": _label_quant,
          "cross_entropy": lambda d: f"{d['rows']}x{d['vocab']}",
          "gelu": lambda d: f"n={d['n']}", "silu": lambda d: f"n={d['n']}"}


SHAPE_SETS = ("quick", "full", "headline")


def cases(op, shape_set):
    """The shapes of `op` in a set (none where the op has no such set); attention's causal flag
    is part of its shape."""
    spec = SPECS[op]
    return [Case(op, LABELS[op](d), d) for d in spec.shapes.get(shape_set, [])]
