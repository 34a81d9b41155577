"""Training memory per rank under each data-parallel strategy (mini_llm/parallel), predicted
from the shapes: what each rank holds of the parameters, gradients and optimizer state (the
planner's table, parallel/plan.py data_parallel_states), the activations of its B/N
sequences, and the peak.

The peak is the largest of four moments, each on top of what the rank holds:
  activations      the one-process peak at batch B/N (predict.py walks it op by op), with the
                   one-process parameters and optimizer state swapped for the strategy's;
  end of backward  every gradient exists and the strategy copies them for its collective (ddp:
                   the bucket copies; zero2, fsdp: the buckets or units in flight);
  optimizer step   zero's all-gather of the updated shards;
  wrap             building the flat buffers while the parameters still exist (zero, fsdp).
gloo's reduce-scatter and all-gather allocate a scratch copy of the full tensor (measured on
CPU); NCCL's work in place (backend="nccl"). Not modelled: the profiler's and the allocator's
overheads (as predict.py), gloo's smaller internal buffers.
"""

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..model import GPT
from ..parallel import DATA_PARALLEL
from ..parallel.ddp import BUCKET_BYTES, group_by_bytes
from ..parallel.plan import data_parallel_states, padded
from .predict import predict_training_memory
from .saved import FP32, MIB


@dataclass
class RankMemory:
    strategy: str
    ranks: int
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int  # the batch and every saved activation of this rank's B/N sequences
    peak: int
    peak_phase: str


def predict_parallel_memory(config, global_batch, strategy, ranks, backend="gloo", **settings):
    """Bytes one rank holds training `config` on `ranks` ranks with a global batch of
    `global_batch` sequences (settings: as predict_training_memory). backend "gloo": its
    reduce-scatter and all-gather allocate a scratch copy of the full tensor (measured on
    CPU); NCCL's work in place."""
    if strategy not in DATA_PARALLEL:
        raise ConfigError(f"{strategy} is not data parallel: `mini-llm parallel plan` predicts "
                          "tensor and pipeline parallel's memory per rank")
    scratch = 1 if backend == "gloo" else 0
    base = predict_training_memory(config, global_batch // ranks, **settings)
    with torch.device("meta"):
        model = GPT(config)
    params = [p for p in model.parameters() if p.requires_grad]
    P = base.parameters
    activations = base.batch + sum(n for _, n in base.activations)
    # The one-process peak minus what one process holds throughout: the activation phase alone.
    activation_phase = max(base.forward_peak, base.backward_peak) - P - base.optimizer_state
    block = sum(p.numel() for p in model.h[0].parameters() if p.requires_grad) * FP32
    root = sum(p.numel() for p in params) * FP32 - len(model.h) * block
    held_params, grads, opt = data_parallel_states(strategy, ranks, root, block, len(model.h), len(params))
    Pp = padded(P, ranks)
    if strategy in ("ddp", "ddp-torch"):
        buckets = P if strategy == "ddp-torch" else sum(
            sum(p.numel() for p in b) * FP32 for b in group_by_bytes(params[::-1], BUCKET_BYTES)
            if len(b) > 1)
        held = held_params + opt + (buckets if strategy == "ddp-torch" else 0)
        end_of_backward = held + base.batch + grads + (0 if strategy == "ddp-torch" else buckets)
        after_step = 0  # below the other phases: no collective after the step
        wrap = P
    elif strategy in ("zero1", "zero2"):
        held = held_params + grads + opt
        # zero1: gloo's scratch copy of the flat gradients; zero2 frees each bucket's gradients
        # once copied, and keeps at most two buckets' copies in flight
        bucket = min(Pp, BUCKET_BYTES + max(p.numel() for p in params) * FP32)
        in_flight = scratch * Pp if strategy == "zero1" else (3 + scratch) * bucket
        end_of_backward = held + base.batch + in_flight + Pp // ranks
        after_step = held + scratch * Pp  # the all-gather of the updated shards
        wrap = P + Pp
    else:  # fsdp, fsdp-torch: held_params counts the gathered root and block being run
        held = held_params + grads + opt
        unit = max(padded(root, ranks), padded(block, ranks))
        # the block's gradients, their copy, the one in flight before it, gloo's scratch
        end_of_backward = held + base.batch + (3 + scratch) * unit
        held += scratch * unit  # gathering a block while the forward and backward run
        after_step = held
        wrap = P + Pp
    phases = {"activations": held + activation_phase, "end of backward": end_of_backward,
              "optimizer step": after_step, "wrap": wrap}
    phase = max(phases, key=phases.get)
    return RankMemory(strategy, ranks, held_params, grads, opt, activations, phases[phase], phase)


def format_parallel_memory(config, global_batch, strategy, ranks, backend=None, **settings):
    """What one rank holds, as a plain-text table (backend: NCCL on CUDA, else gloo)."""
    backend = backend or ("nccl" if settings.get("device") == "cuda" else "gloo")
    if ranks < 1 or global_batch % ranks:
        raise ConfigError(f"a global batch of {global_batch} does not split over {ranks} ranks")
    m = predict_parallel_memory(config, global_batch, strategy, ranks, backend, **settings)
    rows = [("parameters", m.parameters), ("gradients (at the optimizer step)", m.gradients),
            ("optimizer state (AdamW)", m.optimizer_state),
            (f"activations of {global_batch // ranks} sequences", m.activations),
            (f"predicted peak ({m.peak_phase})", m.peak)]
    return "\n".join([f"training memory per rank, {strategy} on {ranks} ranks ({backend}), "
                      f"global batch {global_batch} x {config.block_size} tokens"]
                     + [f"{name:<46}{n / MIB:>10.2f} MiB" for name, n in rows])
