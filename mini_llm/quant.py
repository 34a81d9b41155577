"""Weight-only quantization: the format, a module that computes with it, and whole models.

The format (symmetric; a weight W (N, K) = (out_features, in_features), as in nn.Linear):

    int8, per output channel:  scale = absmax(row) / 127,  q = clamp(round(W / scale), -127, 127)
        qweight int8 (N, K); scales float16 (N, 1); group_size = K.
    int4, group-wise (group_size 32, 64 or 128 consecutive k of one row):
        scale = absmax(group) / 7,  q = clamp(round(W / scale), -7, 7), stored as q + 8 (0..15),
        two per byte: byte j of a row holds k = 2j in its low nibble, k = 2j + 1 in its high one.
        qweight uint8 (N, K // 2); scales float16 (N, K // group_size).

    W ~ dequantize(qweight, scales, group_size) = q * scale of its group, within scale / 2.

    The stored scale is the float16 at or just above absmax / qmax (so no |W| / scale exceeds
    qmax), and at least 2^-24, float16's smallest: an all-zero row or group has a tiny scale,
    q = 0, and dequantizes to exact zeros.

The matmul itself, x @ W.T on the stored weight, is the op `quant_matmul` of the ops seam
(mini_llm.ops: reference, torch, Triton in kernels/quant_matmul.py, CUDA). QuantizedLinear
calls it; quantize_model swaps the nn.Linear layers of a GPT's blocks for QuantizedLinear;
save_quantized / load_quantized keep such a model in one safetensors checkpoint
(mini_llm/checkpoint.py), its bits and group size in the metadata.

    python -m pytest -q tests/test_quant.py
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from . import ops
from .checkpoint import load_checkpoint, resolve_path, save_checkpoint
from .errors import CheckpointError, ConfigError
from .model import GPT
from .ops.checks import QUANT_BITS, QUANT_GROUP_SIZES, check_quant_weight

QMAX = {8: 127, 4: 7}
INT4_OFFSET = 8  # a stored nibble is q + 8, so -7..7 becomes 1..15
DEFAULT_INT4_GROUP_SIZE = 64
SMALLEST_FP16 = 2.0**-24  # the smallest positive float16 (subnormal): a scale is never 0


def resolve_group_size(bits, K, group_size=None):
    """The group size quantize uses for a weight with K input features, or a ConfigError.
    int8: one scale per output channel (None or K). int4: 32, 64 or 128 (None: 64)."""
    if bits not in QUANT_BITS:
        raise ConfigError(f"cannot quantize to {bits} bits; supported: {', '.join(map(str, QUANT_BITS))}")
    if bits == 8:
        if group_size not in (None, K):
            raise ConfigError(f"int8 has one scale per output channel: group_size must be None or "
                              f"K = {K}, got {group_size}")
        return K
    if K % 2:
        raise ConfigError(f"int4 packs two values per byte along K: K must be even, got K = {K}")
    group_size = DEFAULT_INT4_GROUP_SIZE if group_size is None else group_size
    if group_size not in QUANT_GROUP_SIZES:
        raise ConfigError(f"int4 group_size {group_size} is not supported; supported: "
                          f"{', '.join(map(str, QUANT_GROUP_SIZES))}")
    if K % group_size:
        raise ConfigError(f"group_size {group_size} does not divide K = {K}")
    return group_size


def pack_int4(q):
    """q: int8 (N, K) in [-7, 7], K even -> uint8 (N, K // 2): k = 2j low nibble, 2j + 1 high."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise ConfigError(f"pack_int4 takes an (N, K) tensor with K even, got shape {tuple(q.shape)}")
    nibbles = (q.to(torch.int16) + INT4_OFFSET).to(torch.uint8)  # 1..15
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed):
    """uint8 (N, K // 2) -> int8 (N, K) in [-8, 7], the inverse of pack_int4."""
    low = (packed & 0xF).to(torch.int8) - INT4_OFFSET
    high = (packed >> 4).to(torch.int8) - INT4_OFFSET
    return torch.stack((low, high), dim=-1).flatten(-2)  # (N, K // 2, 2) -> k = 2j, 2j + 1


def _group_scales(groups, qmax):
    """float16 scales (N, n_groups) for groups (N, n_groups, group_size) float32, such that
    absmax / scale <= qmax holds for the stored float16 value (so round(W / scale) needs no
    clamp and |W - q * scale| <= scale / 2)."""
    absmax = groups.abs().amax(dim=-1)
    scales = (absmax / qmax).clamp_min(SMALLEST_FP16).to(torch.float16)
    if not torch.isfinite(scales).all():
        raise ConfigError(f"weights too large for float16 scales (absmax {absmax.max().item():.3g})")
    # Rounding to float16 may have made a scale smaller than absmax / qmax: take the next
    # float16 up (for positive floats, the next bit pattern is the next value).
    too_small = scales.float() * qmax < absmax
    return torch.where(too_small, (scales.view(torch.int16) + 1).view(torch.float16), scales)


def quantize(w, bits, group_size=None):
    """w: float (N, K) -> (qweight, scales) in the format above. group_size: int8 None or K
    (per output channel); int4 32, 64 or 128 (None: 64)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ConfigError(f"quantize takes a float (N, K) weight, got {w.dtype} {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ConfigError("cannot quantize a weight that holds inf or NaN")
    N, K = w.shape
    group_size = resolve_group_size(bits, K, group_size)
    qmax = QMAX[bits]
    groups = w.detach().float().reshape(N, K // group_size, group_size)
    scales = _group_scales(groups, qmax)  # (N, K // group_size) float16
    q = torch.round(groups / scales.float()[..., None]).clamp(-qmax, qmax).to(torch.int8).reshape(N, K)
    return (q if bits == 8 else pack_int4(q)), scales


def dequantize(qweight, scales, group_size):
    """(qweight, scales) -> W float32 (N, K): q times the scale of its group."""
    bits, N, K = check_quant_weight("dequantize", qweight, scales, group_size)
    q = qweight if bits == 8 else unpack_int4(qweight)
    groups = q.reshape(N, K // group_size, group_size).float() * scales.float()[..., None]
    return groups.reshape(N, K)


class QuantizedLinear(nn.Module):
    """nn.Linear with its weight stored quantized: y = quant_matmul(x, W) + bias, in x's dtype.
    Inference only: qweight, scales and bias are buffers, not parameters."""

    def __init__(self, in_features, out_features, bits, group_size=None, bias=True, device=None,
                 bias_dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = resolve_group_size(bits, in_features, group_size)
        qweight_shape = (out_features, in_features) if bits == 8 else (out_features, in_features // 2)
        self.register_buffer("qweight", torch.zeros(qweight_shape, dtype=torch.int8 if bits == 8 else torch.uint8,
                                                    device=device))
        self.register_buffer("scales", torch.ones(out_features, in_features // self.group_size,
                                                  dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear, bits, group_size=None):
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, bits, group_size, bias=linear.bias is not None,
                     device=weight.device, bias_dtype=weight.dtype)
        module.qweight, module.scales = quantize(weight, bits, module.group_size)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):  # as nn.Linear: compute in autocast's dtype
            x = x.to(torch.get_autocast_dtype(x.device.type))
        y = ops.quant_matmul(x, self.qweight, self.scales, self.group_size)  # (..., out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _apply(self, fn, recurse=True):
        # model.to(dtype) / .half() convert every floating buffer; the scales are float16 by
        # the format, so they follow the model's device but keep their dtype.
        scales = self.scales
        super()._apply(fn, recurse)
        self.scales = scales.to(device=self.scales.device, dtype=torch.float16)
        return self

    def extra_repr(self):
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"
                f"{group}, bias={self.bias is not None}")


def _block_linears(model):
    """(parent module, attribute name, qualified name, nn.Linear) for every nn.Linear inside the
    transformer blocks of a GPT (the embedding and a tied output head are not among them)."""
    found = []
    for prefix, parent in model.h.named_modules(prefix="h"):
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found.append((parent, name, f"{prefix}.{name}", child))
    return found


def _state_bytes(model):
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@dataclass
class QuantSummary:
    bits: int
    group_size: int | None  # None: int8, one scale per output channel
    layers: int  # nn.Linear layers replaced
    bytes_before: int  # every parameter and buffer of the model
    bytes_after: int

    def __str__(self):
        fmt = f"int4 g{self.group_size}" if self.bits == 4 else "int8 per channel"
        return (f"{fmt}: {self.layers} linear layers quantized; model weights {self.bytes_before / 2**20:.2f} MiB"
                f" -> {self.bytes_after / 2**20:.2f} MiB ({self.bytes_before / self.bytes_after:.2f}x smaller)")


def _quantize_layers(model, bits, group_size, make):
    """Replace the block linears of `model` with make(linear) in place; returns their count."""
    if getattr(model, "quantization", None):
        raise ConfigError(f"the model is already quantized ({model.quantization})")
    replacements = []  # all made before any is swapped in: an error leaves the model as it was
    for parent, name, qualified, linear in _block_linears(model):
        try:
            replacements.append((parent, name, make(linear)))
        except ConfigError as e:
            raise ConfigError(f"{qualified} ({linear.out_features} x {linear.in_features}): {e}") from None
    for parent, name, module in replacements:
        setattr(parent, name, module)
    model.quantization = {"bits": bits, "group_size": group_size}
    return len(replacements)


def quantize_model(model, bits, group_size=DEFAULT_INT4_GROUP_SIZE):
    """Quantize the nn.Linear layers of a GPT's transformer blocks in place: int8 per output
    channel (group_size is ignored), or int4 with groups of `group_size`. Returns a QuantSummary."""
    group_size = None if bits == 8 else group_size or DEFAULT_INT4_GROUP_SIZE
    before = _state_bytes(model)
    with torch.no_grad():
        layers = _quantize_layers(model, bits, group_size,
                                  lambda linear: QuantizedLinear.from_linear(linear, bits, group_size))
    return QuantSummary(bits, group_size, layers, before, _state_bytes(model))


def save_quantized(path, model, meta):
    """One safetensors checkpoint (mini_llm/checkpoint.py) of a quantize_model'ed GPT; `meta` as
    for save_checkpoint (usually the source checkpoint's), with the bits and group size added."""
    if not getattr(model, "quantization", None):
        raise ConfigError("the model is not quantized: call quantize_model first")
    save_checkpoint(path, model, None, {**meta, "quantization": model.quantization})


def load_quantized(path, device="cpu"):
    """Rebuild a model saved by save_quantized; returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path)
    quant = ckpt.meta.get("quantization")
    if not quant:
        raise CheckpointError(f"{resolve_path(path)} holds full-precision weights: load it with "
                              "mini_llm.checkpoint.load_model")
    try:
        model = GPT(ckpt.config)
        bits, group_size = quant["bits"], quant["group_size"]
        _quantize_layers(model, bits, group_size, lambda linear: QuantizedLinear(
            linear.in_features, linear.out_features, bits, group_size, bias=linear.bias is not None))
        model.load_state_dict(ckpt.model_state)
    except (ConfigError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{resolve_path(path)} does not match its own model config and "
                              f"quantization: {e}") from None
    return model.to(device).eval(), ckpt
