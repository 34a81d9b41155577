"""Fully sharded data parallel, written here (`--parallel fsdp`; ZeRO stage 3): each rank keeps
only 1/N of the parameters, of their gradients and of the optimizer state.

The model is cut into units: one per transformer block, and the root (embeddings, final norm,
head). Each unit's parameters are one flat buffer sharded over the ranks (flat.py); between
uses the buffer's memory is freed, only the shard stays.

  forward   before a block runs, its unit is all-gathered (every rank's shard -> the full
            parameters); after it, the full buffer is freed. The root is gathered before the
            model's forward and kept until its gradients exist (the head and the embedding are
            the first and last layers of the backward).
  backward  when the gradient of a block's output arrives (a hook on that tensor), its unit is
            all-gathered again: the backward needs the weights. When every parameter of the unit
            has its gradient (post-accumulate hooks), the gradients are reduce-scattered, each
            rank keeping its shard's sum, and the full buffer and gradients are freed.
  step      AdamW updates this rank's shards (zero.ShardedAdamW); nothing is gathered: the next
            forward gathers what it needs.

Freeing keeps the buffer's storage object and resizes it to 0 bytes: the tensors autograd
saved in the forward are views of it, and they see the weights again once it is regathered.

Bytes per micro-batch (P_u: a unit's padded parameter bytes): an all-gather of every unit in
the forward, of every block again in the backward, a reduce-scatter of every unit's gradients:
(N-1)/N (P + P_blocks + P). In evaluation, forwards gather too (not part of a step).
"""

import torch

from ..errors import ConfigError
from .flat import FlatParams, InFlight
from .strategy import Snapshot, Strategy, broadcast_model, sharded_clip_grad_norm
from .zero import ShardedAdamW


class Unit(FlatParams):
    """A flat sharded buffer whose full form exists only while it is used."""

    def __init__(self, params, world):
        super().__init__(params, world)
        self.ready, self.gathered = 0, True
        self.free()

    def gather(self):
        if not self.gathered:
            storage = self.full.untyped_storage()
            storage.resize_(self.full.numel() * self.full.element_size())
            self.all_gather()
            self.gathered = True

    def free(self):
        self.full.untyped_storage().resize_(0)
        self.gathered = False


class FSDP(Strategy):
    """Blocks' parameters sharded, gathered around their use (the module's docstring)."""

    def wrap(self, model):
        if getattr(model, "activation_checkpointing", False):
            raise ConfigError("fsdp here does not combine with activation checkpointing "
                              "(the recomputed forward would free its own weights)")
        broadcast_model(model)
        blocks = list(model.h)
        in_blocks = {p for b in blocks for p in b.parameters()}
        root = [p for p in model.parameters() if p.requires_grad and p not in in_blocks]
        self.root = Unit(root, self.world)
        self.units = [Unit([p for p in b.parameters() if p.requires_grad], self.world) for b in blocks]
        self.unit_of = {p: u for u in [self.root, *self.units] for p in u.params}
        self.in_flight, self.reduced = InFlight(self.world.size), 0
        model.register_forward_pre_hook(lambda *_: self.root.gather())
        model.register_forward_hook(self.after_model)
        for block, unit in zip(blocks, self.units):
            block.register_forward_pre_hook(lambda *_, u=unit: u.gather())
            block.register_forward_hook(lambda _m, _a, out, u=unit: self.after_block(u, out))
        for p in self.unit_of:
            p.register_post_accumulate_grad_hook(self.grad_ready)
        return model

    def after_block(self, unit, out):
        unit.free()
        if out.requires_grad:  # training: the backward through this block needs it again
            out.register_hook(lambda _grad: unit.gather())

    def after_model(self, _model, _args, _out):
        if not torch.is_grad_enabled():  # evaluation: no backward will use the root
            self.root.free()

    def grad_ready(self, p):
        unit = self.unit_of[p]
        unit.ready += 1
        if unit.ready == len(unit.params):
            self.in_flight.start(unit)
            self.reduced += 1
            for q in unit.params:
                q.grad = None
            unit.ready = 0
            unit.free()

    def optimizer(self, param_groups, make_adamw):
        return ShardedAdamW([self.root, *self.units], param_groups, make_adamw,
                            gather_after_step=False)

    def micro_batch(self, last):
        return self  # every micro-batch reduce-scatters: no rank ever holds all the gradients

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            if self.reduced != 1 + len(self.units):
                raise RuntimeError(f"rank {self.world.rank}: some parameters got no gradient; "
                                   "fsdp needs every trainable parameter used in every step")
            self.in_flight.drain()
            self.reduced = 0

    def clip_grad_norm(self, model, max_norm):
        shards = [u.grad_shard for u in [self.root, *self.units]]
        return sharded_clip_grad_norm(shards, max_norm, self.world)

    def for_checkpoint(self, model, optimizer):
        units = [self.root, *self.units]
        for unit in units:
            unit.gather()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for unit in units:
            unit.free()
        return Snapshot(state), Snapshot(optimizer.full_state_dict())
