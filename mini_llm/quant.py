"""Weight-only quantized models: a module that computes with the quantized weight format
(mini_llm/ops/quant_format.py), whole GPTs quantized in place, and their checkpoints.

QuantizedLinear calls the op `quant_matmul` of the ops seam (mini_llm.ops: reference, torch,
Triton in kernels/quant_matmul.py, CUDA); quantize_model swaps the nn.Linear layers of a GPT's
blocks for QuantizedLinear; save_quantized / load_quantized keep such a model in one safetensors
checkpoint (mini_llm/checkpoint.py), its bits and group size in the metadata.

    python -m pytest -q tests/test_quant.py
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from . import ops
from .checkpoint import load_checkpoint, resolve_path, save_checkpoint
from .errors import CheckpointError, ConfigError
from .model import GPT
from .ops.quant_format import DEFAULT_INT4_GROUP_SIZE, quantize, resolve_group_size


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
