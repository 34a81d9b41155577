"""The peak of one training step: the forward piles up what each layer saves, the backward
frees it op by op while the parameter gradients grow, then the optimizer step runs."""

from dataclasses import dataclass

import torch

from .. import ops
from ..errors import ConfigError
from ..model import GPT, GPTConfig
from .saved import FP32, INT64, MIB, Shapes, block_layer, embeddings_layer, head_layer

@dataclass
class MemoryPrediction:
    """Bytes. `activations` lists (layer name, bytes held from the forward to the backward)."""

    config: GPTConfig
    batch_size: int
    setting: str  # dtype, device, kernels, checkpointing in words
    parameters: int
    gradients: int
    optimizer_state: int
    batch: int
    activations: list
    backward_transient: int  # gradients so far + temporaries (+ a recomputed block) at its peak
    forward_peak: int
    backward_peak: int
    optimizer_peak: int
    layers: list  # the Layer objects, for a closer look

    @property
    def peak(self):
        return max(self.forward_peak, self.backward_peak, self.optimizer_peak)

    @property
    def peak_phase(self):
        phases = {"forward": self.forward_peak, "backward": self.backward_peak,
                  "optimizer step": self.optimizer_peak}
        return max(phases, key=phases.get)


def _resolve(kernels):
    """A --kernels selection as {op: backend}; only the attention may be on the reference
    backend (the other reference ops are chains of small ops not modelled here)."""
    choice = ops.parse(kernels)
    unmodelled = sorted(op for op, b in choice.items() if b == "reference" and op != "attention")
    if unmodelled:
        raise ConfigError(
            f"the memory model covers the reference backend for attention only, not for "
            f"{', '.join(unmodelled)}; use --kernels attention=reference for the materialized "
            "attention with the other ops fused")
    return choice


def check_arguments(config, batch_size, dtype, device):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")


def predict_training_memory(config, batch_size, *, dtype="float32", device="cpu", kernels="torch",
                            activation_checkpointing=False):
    """Predict the peak bytes of one training step (full context, B = batch_size).

    dtype: "float32" or "bfloat16" (autocast, as train.py on a GPU); device: "cpu" or "cuda";
    kernels: a --kernels selection string (attention=reference: the materialized attention).
    """
    check_arguments(config, batch_size, dtype, device)
    choice = _resolve(kernels)
    if choice["attention"] == "reference" and dtype != "float32":
        raise ConfigError("the materialized (reference) attention is modelled in float32 only")
    s = Shapes(config, batch_size, dtype, device)
    with torch.device("meta"):  # the parameter shapes, without memory
        model = GPT(config)
    params = [p for group in model.param_groups(0.0) for p in group["params"]]  # AdamW's order
    P = sum(p.numel() for p in params) * FP32

    layers = [embeddings_layer(s, config, model)]
    for i in range(config.n_layer):
        block = block_layer(s, config, model, i, choice)
        if activation_checkpointing:
            # non-reentrant torch.utils.checkpoint: the block's input, and the CPU RNG state so the
            # rerun draws the same dropout masks (a CPU tensor: no GPU memory).
            rng = 0 if s.cuda else torch.get_rng_state().numel()
            block.kept = [("block input (B,T,C), to rerun the block", s.N * s.C * FP32),
                          ("CPU RNG state", rng)]
        layers.append(block)
    layers.append(head_layer(s, config, model))

    logits = s.N * s.V * s.act
    optimizer_state = 2 * P + len(params) * FP32  # exp_avg, exp_avg_sq, a float32 step each
    batch = 2 * s.N * INT64
    held = P + optimizer_state + batch  # before the forward and after the backward

    # Forward: activations pile up. Inside a checkpointed block all its saved tensors exist
    # until the block returns. At the end the logits exist too, until train.py keeps only the
    # loss: no op saves the logits themselves for the backward.
    running = forward_peak = held
    for layer in layers:
        forward_peak = max(forward_peak, running + layer.saved_bytes)
        running += layer.activation_bytes
    ce_copy = s.N * s.V * FP32 if s.autocast else 0  # the fp32 logits made for the loss
    forward_peak = max(forward_peak, running + logits + ce_copy)

    activations = sum(layer.activation_bytes for layer in layers)
    backward_peak, after = _backward_peak(layers, held + activations)
    assert after == held + P, "every gradient but the parameters' must be freed"

    # Optimizer step: gradients of every parameter, plus AdamW's one temporary per parameter,
    # denom = sqrt(v / (1 - beta2^t)) + eps, freed before the next parameter's is made.
    optimizer_peak = held + P + max(p.numel() * FP32 for p in params)

    setting = (f"{dtype}, {device}, kernels {kernels}, "
               f"activation checkpointing {'on' if activation_checkpointing else 'off'}")
    return MemoryPrediction(
        config=config, batch_size=batch_size, setting=setting, parameters=P, gradients=P,
        optimizer_state=optimizer_state, batch=batch,
        activations=[(layer.name, layer.activation_bytes) for layer in layers],
        backward_transient=backward_peak - held - activations, forward_peak=forward_peak,
        backward_peak=backward_peak, optimizer_peak=optimizer_peak, layers=layers)


def _backward_peak(layers, live):
    """Walk the backward from the loss down to the embeddings. `live` is every byte held when it
    starts; returns the highest value reached and the value at the end."""
    peak = live
    for layer in reversed(layers):
        if layer.kept is not None:  # checkpointed: rerun the forward, its saved tensors return
            live += layer.saved_bytes - layer.kept[0][1]
            peak = max(peak, live)
        for step in reversed(layer.steps):
            peak = max(peak, live + step.grad_in + step.param_grad + step.workspace)
            live += step.grad_in + step.param_grad - step.grad_out - step.saved_bytes
        if layer.kept is not None:
            live -= sum(n for _, n in layer.kept[1:])
    return peak, live


def format_prediction(pred, measured=None):
    """The breakdown as a plain-text table; with `measured` (bytes), that and the ratio too."""
    rows = [("parameters", pred.parameters),
            ("optimizer state (AdamW m, v, step)", pred.optimizer_state),
            ("batch (x, y)", pred.batch)]
    rows += [(f"activations: {name}", n) for name, n in pred.activations]
    rows += [("backward: gradients + temporaries at its peak", pred.backward_transient),
             None,
             ("= backward peak", pred.backward_peak),
             ("forward peak", pred.forward_peak),
             ("optimizer step peak", pred.optimizer_peak),
             (f"predicted peak ({pred.peak_phase})", pred.peak)]
    if measured is not None:
        rows.append(("measured peak", measured))
    c = pred.config
    lines = [f"training memory, {c.n_layer} layers x {c.n_embd} wide, batch {pred.batch_size} x "
             f"{c.block_size} tokens ({pred.setting})"]
    for row in rows:
        lines.append("-" * 60 if row is None else f"{row[0]:<46}{row[1] / MIB:>10.2f} MiB")
    if measured is not None:
        lines.append(f"{'predicted / measured':<46}{pred.peak / measured:>10.3f}")
    return "\n".join(lines)
