"""Training memory per rank under each data-parallel strategy (mini_llm/parallel), predicted
from the shapes: what each rank holds of the parameters, gradients and optimizer state, and
the activations of its B/N sequences.

P: the parameters' bytes (4 per float32), N ranks, Pp: P padded up to N equal shards.

                parameters       gradients (at the step)   optimizer state   sent per step
  ddp           P                P                         2 P               2 (N-1)/N P
  ddp-torch     P                P (+ P of buckets)        2 P               2 (N-1)/N P
  zero1         Pp + Pp/N        Pp + Pp/N                 2 Pp/N            2 (N-1)/N Pp
  zero2         Pp + Pp/N        Pp/N                      2 Pp/N            (accum+1)(N-1)/N Pp
  fsdp          Pp/N + 2 units   Pp/N                      2 Pp/N            accum (N-1)/N (2 Pp + blocks)
  fsdp-torch    as fsdp

ZeRO keeps the full parameters (views into its flat buffer) and its own shard beside them
(zero1 also the full gradients, in a flat buffer, for accumulation); FSDP
holds only shards, plus the gathered root (embeddings, head) and the block being run.

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

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..model import GPT
from ..parallel.ddp import BUCKET_BYTES, group_by_bytes
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
    scratch = 1 if backend == "gloo" else 0
    base = predict_training_memory(config, global_batch // ranks, **settings)
    with torch.device("meta"):
        model = GPT(config)
    params = [p for p in model.parameters() if p.requires_grad]
    P = base.parameters
    steps = 4 * len(params)  # AdamW's float32 step counter per tensor
    activations = base.batch + sum(n for _, n in base.activations)
    # The one-process peak minus what one process holds throughout: the activation phase alone.
    activation_phase = max(base.forward_peak, base.backward_peak) - P - base.optimizer_state

    def padded(tensors):
        numel = sum(p.numel() for p in tensors)
        return math.ceil(numel / ranks) * ranks * FP32

    Pp = padded(params)
    if strategy in ("ddp", "ddp-torch"):
        held_params, grads, opt = P, P, base.optimizer_state
        buckets = P if strategy == "ddp-torch" else sum(
            sum(p.numel() for p in b) * FP32 for b in group_by_bytes(params[::-1], BUCKET_BYTES)
            if len(b) > 1)
        held = held_params + opt + (buckets if strategy == "ddp-torch" else 0)
        end_of_backward = held + base.batch + grads + (0 if strategy == "ddp-torch" else buckets)
        after_step = 0  # below the other phases: no collective after the step
        wrap = P
    elif strategy in ("zero1", "zero2"):
        held_params = Pp + Pp // ranks
        grads = Pp // ranks + (Pp if strategy == "zero1" else 0)
        opt = 2 * Pp // ranks + steps
        held = held_params + grads + opt
        # zero1: gloo's scratch copy of the flat gradients; zero2 frees each bucket's gradients
        # once copied, and keeps at most two buckets' copies in flight
        bucket = min(Pp, BUCKET_BYTES + max(p.numel() for p in params) * FP32)
        in_flight = scratch * Pp if strategy == "zero1" else (3 + scratch) * bucket
        end_of_backward = held + base.batch + in_flight + Pp // ranks
        after_step = held + scratch * Pp  # the all-gather of the updated shards
        wrap = P + Pp
    else:  # fsdp, fsdp-torch
        blocks = [[p for p in b.parameters() if p.requires_grad] for b in model.h]
        in_blocks = {id(p) for b in blocks for p in b}
        root = padded([p for p in params if id(p) not in in_blocks])
        shards = (root + sum(padded(b) for b in blocks)) // ranks
        held_params, grads, opt = shards, shards, 2 * shards + steps
        gathered = root + max(padded(b) for b in blocks)  # the root and the block being run
        held = held_params + grads + opt + gathered
        unit = max(root, *(padded(b) for b in blocks))
        # the block's gradients, their copy, the one in flight before it, gloo's scratch
        end_of_backward = held + base.batch + (3 + scratch) * unit
        held += scratch * unit  # gathering a block while the forward and backward run
        after_step = held
        wrap = P + padded(params)
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
