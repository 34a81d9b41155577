"""ZeRO (Rajbhandari et al., 2020), stages 1 and 2 (`--parallel zero1`, `zero2`): data parallel
in which each rank keeps the optimizer state of 1/N of the parameters only.

Every rank still holds all the parameters (views into flat buffers, flat.py) and runs its
slice of the batch. Each flat buffer is cut into N shards; rank r owns shard r:

  zero1  the gradients accumulate in one flat buffer (the parameters' .grad are views into
         it); after the last micro-batch's backward it is reduce-scattered: rank r receives
         the sum of shard r's gradients only. Its AdamW (exp_avg, exp_avg_sq: 2 P / N floats
         instead of 2 P) updates shard r, then an all-gather sends every rank's updated shard
         to all.
  zero2  the gradients are sharded as well: buckets of about bucket_bytes are reduce-scattered
         as soon as the backward has produced them (overlapped, as in ddp.py) and the full
         gradients of the bucket are freed at once; with gradient accumulation every
         micro-batch is reduced, each rank summing into its gradient shard.

Bytes per optimizer step (G = the padded gradient bytes, 4 P rounded up to N shards):
  zero1  reduce-scatter (N-1)/N G + all-gather (N-1)/N G = 2 (N-1)/N G, ddp's volume
  zero2  grad_accum x (N-1)/N G + (N-1)/N G
"""

import torch

from .ddp import BUCKET_BYTES, group_by_bytes
from .flat import FlatParams, InFlight
from .strategy import Snapshot, Strategy, broadcast_model, sharded_clip_grad_norm


class ZeRO(Strategy):
    """ZeRO stage 1 or 2 (the module's docstring)."""

    def __init__(self, world, global_batch=None, stage=1, bucket_bytes=BUCKET_BYTES):
        super().__init__(world, global_batch)
        self.stage, self.bucket_bytes, self.sync = stage, bucket_bytes, True

    def wrap(self, model):
        broadcast_model(model)
        params = [p for p in model.parameters() if p.requires_grad][::-1]  # the backward's order
        if self.stage == 1:
            self.flats = [FlatParams(params, self.world)]
            self.flats[0].keep_grads_flat()
        else:
            self.flats = [FlatParams(b, self.world) for b in group_by_bytes(params, self.bucket_bytes)]
            self.flat_of = {p: f for f in self.flats for p in f.params}
            self.ready = {f: 0 for f in self.flats}
            for p in params:
                p.register_post_accumulate_grad_hook(self.grad_ready)
        self.in_flight, self.started = InFlight(self.world.size), set()
        return model

    def optimizer(self, param_groups, make_adamw):
        return ShardedAdamW(self.flats, param_groups, make_adamw, gather_after_step=True)

    def micro_batch(self, last):
        self.sync = last or self.stage == 2
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None and self.sync:  # after the backward: reduce what the hooks did not
            for flat in self.flats:
                if flat not in self.started:
                    self.start(flat)
            self.in_flight.drain()
            self.started = set()

    def grad_ready(self, p):
        flat = self.flat_of[p]
        self.ready[flat] += 1
        if self.ready[flat] == len(flat.params):
            self.start(flat)

    def start(self, flat):
        """Reduce-scatter a flat buffer's gradients; zero2 then frees them."""
        self.in_flight.start(flat)
        self.started.add(flat)
        if self.stage == 2:
            for p in flat.params:
                p.grad = None
            self.ready[flat] = 0

    def clip_grad_norm(self, model, max_norm):
        return sharded_clip_grad_norm([f.grad_shard for f in self.flats], max_norm, self.world)

    def for_checkpoint(self, model, optimizer):
        return model, Snapshot(optimizer.full_state_dict())


class ShardedAdamW:
    """The project's AdamW over this rank's shards only, one piece per parameter that overlaps
    them (so weight decay still follows the parameter's group). The loop uses it as it uses
    AdamW: param_groups (to set the learning rate), step(), zero_grad()."""

    def __init__(self, flats, param_groups, make_adamw, gather_after_step):
        self.flats, self.gather_after_step = flats, gather_after_step
        self.index = {p: i for i, p in enumerate(p for g in param_groups for p in g["params"])}
        self.group_params = [[self.index[p] for p in g["params"]] for g in param_groups]
        group_of = {p: i for i, g in enumerate(param_groups) for p in g["params"]}
        groups = [{**g, "params": []} for g in param_groups]
        self.piece_of = {}  # piece -> (flat, its parameter, first element it holds, where in the shard)
        for flat in flats:
            for p, start, where in flat.pieces():
                piece = flat.shard[where]
                piece.grad = flat.grad_shard[where]
                groups[group_of[p]]["params"].append(piece)
                self.piece_of[piece] = (flat, p, start, where)
        self.adamw = make_adamw(groups)
        self.steps = 0

    @property
    def param_groups(self):
        return self.adamw.param_groups

    def step(self):
        self.adamw.step()
        self.steps += 1
        if self.gather_after_step:  # every rank needs every updated parameter for its forward
            for flat in self.flats:
                flat.all_gather()

    def zero_grad(self, set_to_none=True):
        for flat in self.flats:
            flat.zero_grads()

    def full_state_dict(self):
        """The state dict a one-process AdamW would have (collective: every rank calls it)."""
        state = {}
        for flat in self.flats:
            for name in ("exp_avg", "exp_avg_sq"):
                shard = torch.zeros_like(flat.shard)
                for piece, (owner, _, _, where) in self.piece_of.items():
                    if owner is flat and piece in self.adamw.state:
                        shard[where] = self.adamw.state[piece][name]
                for p, value in zip(flat.params, flat.gathered_state(shard)):
                    state.setdefault(self.index[p], {})[name] = value
        for s in state.values():
            s["step"] = torch.tensor(float(self.steps))
        if not self.steps:
            state = {}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": ids}
                  for g, ids in zip(self.adamw.param_groups, self.group_params)]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, full):
        """Keep this rank's part of a one-process AdamW state dict (resuming a checkpoint)."""
        for g, saved in zip(self.adamw.param_groups, full["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        for piece, (_, p, start, _) in self.piece_of.items():
            saved = full["state"].get(self.index[p])
            if saved:
                self.adamw.state[piece] = {
                    "step": saved["step"].clone(),
                    **{k: saved[k].reshape(-1)[start:start + piece.numel()].clone()
                       for k in ("exp_avg", "exp_avg_sq")}}
                self.steps = int(saved["step"])
