"""Pipeline parallel, written here (`--parallel pp`): the layers split into P stages, one per
rank, and the micro-batches of a step passed from stage to stage with point-to-point sends.

    stage 0: embeddings + blocks 0..L/P-1 --(B,T,C) activations-->  stage 1: next L/P blocks
      ... --> stage P-1: its blocks + final norm + head + loss
    and back: the gradient of each stage's input, (B,T,C), to the stage before it.

A step's M micro-batches (M = grad_accum) keep every stage busy in turn. The order each stage
runs them in is its schedule (F m: forward of micro-batch m, B m: its backward):

  GPipe: all forwards, then all backwards. Stage s holds the activations of all M micro-batches
         at once. 4 stages, M = 4 (time goes right; idle slots are the "bubble"):
           s0  F0 F1 F2 F3 .  .  .  .  .  .  B0 B1 B2 B3
           s1  .  F0 F1 F2 F3 .  .  .  .  B0 B1 B2 B3 .
           s2  .  .  F0 F1 F2 F3 .  .  B0 B1 B2 B3 .  .
           s3  .  .  .  F0 F1 F2 F3 B0 B1 B2 B3 .  .  .
  1F1B:  P-s-1 forwards to fill the pipe, then one forward and one backward in turn, then the
         backwards left. The same bubble, but stage s holds at most P-s micro-batches.

Equal to one process bitwise: each stage runs the ops of its layers on the same micro-batches,
and the backwards of a stage run in micro-batch order (both schedules), so every .grad sums the
same terms in the same order. The tied embedding is the exception: the first stage uses it as
the embedding, the last as the head, so each keeps a copy and the two gradients are summed by
an all-reduce after the backwards (one process sums them per micro-batch instead: the same
terms in another order, bitwise equal only with one micro-batch). The gradient norm is taken
from every tensor's squared sum in the one-process order, so clipping is exact too. Dropout
masks are not the one-process ones (each stage draws its own in another order); use dropout 0
to compare.

Sends are asynchronous (isend), waited for at the end of the step; receives block. A stage only
ever waits for data its neighbour produces before waiting itself, so neither schedule hangs.
"""

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from ..model import GPT
from ..optim import clip_grad_norm, square_sum
from . import comm
from .strategy import Snapshot, Strategy


def gpipe(micro, stages, stage):
    """The order stage `stage` runs a step in: ("forward" | "backward", micro-batch) pairs."""
    return [("forward", m) for m in range(micro)] + [("backward", m) for m in range(micro)]


def one_f_one_b(micro, stages, stage):
    warmup = min(stages - stage - 1, micro)
    order = [("forward", m) for m in range(warmup)]
    for m in range(micro - warmup):
        order += [("forward", warmup + m), ("backward", m)]
    return order + [("backward", m) for m in range(micro - warmup, micro)]


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b}


def check_divides(config, stages):
    if config.n_layer % stages:
        raise ConfigError(f"pipeline parallel over {stages} ranks splits the layers: n_layer "
                          f"{config.n_layer} is not divisible by {stages}")


class LastStage(nn.Module):
    """The last stage's layers called as a GPT is, (inputs, targets) -> (logits, loss), so
    the task's own loss function runs on it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, targets=None):
        x = self.model.blocks(x, self.model.rope(x.size(1), 0, x.device))
        return self.model.head(x, targets)


class Pipeline(Strategy):
    """The run's `ranks` (loop.py, strategy.py) for pipeline parallelism: rank s is stage s.
    The task's batches must be (inputs, targets) pairs and its loss call model(inputs, targets)."""

    name = "pp"

    def __init__(self, world, global_batch=None, schedule="1f1b"):
        if schedule not in SCHEDULES:
            raise ConfigError(f"pipeline schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        super().__init__(world, global_batch)
        self.schedule = SCHEDULES[schedule]
        self.stage, self.stages = world.rank, world.size
        self.first, self.last = self.stage == 0, self.stage == self.stages - 1

    def local_batch(self, batch):
        return batch

    def wrap(self, model):
        """Keep this stage's layers of a GPT (built the same on every rank), in place."""
        config, P = model.config, self.stages
        check_divides(config, P)
        self.names = [name for name, _ in model.named_parameters()]  # one process's order
        self.per = per = config.n_layer // P
        model.h = model.h[self.stage * per:(self.stage + 1) * per]  # renumbered from 0
        self.tied = config.tie_weights and P > 1  # the last stage keeps a copy of the embedding
        if not self.first:
            model.wpe = None
            if not (self.last and config.tie_weights):
                model.wte = None
        if not self.last:
            model.ln_f = model.lm_head = None
        # new_group is collective: every rank makes it, only the first and last use it
        self.tied_group = dist.new_group([0, P - 1]) if self.tied else None
        self.model, self.dtype = model, next(model.parameters()).dtype
        # Evaluation calls the model as one process does (model(x, y)); on every rank the stage
        # answers with the whole model's forward, run through the stages.
        model.forward = self.forward_all
        return model

    def forward_backward(self, run, task, it):
        """Run this stage's part of every micro-batch of step `it`, in the schedule's order."""
        M = run.cfg.grad_accum
        self.inputs, self.outputs, self.sends = {}, {}, []
        self.loss, self.values = torch.zeros((), device=self.world.device), {}
        batches = [task.batch(it, m) for m in range(M)]
        for kind, m in self.schedule(M, self.stages, self.stage):
            if kind == "forward":
                self.forward(task, batches[m], m, M, run.autocast)
            else:
                self.backward(m, M)
        for work in self.sends:
            work.wait()
        if self.tied and (self.first or self.last):
            comm.all_reduce(self.model.wte.weight.grad, group=self.tied_group)
        return self.loss, self.values

    def forward(self, task, batch, m, M, autocast):
        x, targets = batch
        shape = (x.size(0), x.size(1), self.model.config.n_embd)
        with autocast:
            if self.first:
                h, rope = self.model.embed(x)
            else:
                h = torch.empty(shape, dtype=self.dtype, device=x.device)
                h = comm.recv(h, self.stage - 1).requires_grad_()
                rope = self.model.rope(x.size(1), 0, x.device)
            self.inputs[m] = h
            if self.last:
                loss, values = task.loss(LastStage(self.model), (h, targets))
                self.outputs[m] = loss / M
                self.loss = self.loss + loss.detach() / M
                for name, value in values.items():
                    self.values[name] = self.values.get(name, 0.0) + value.detach() / M
            else:
                y = self.model.blocks(h, rope)
                self.outputs[m] = y
                self.sends.append(comm.isend(y.detach(), self.stage + 1))

    def backward(self, m, M):
        out, h = self.outputs.pop(m), self.inputs.pop(m)
        if self.last:
            out.backward()
        else:
            grad = comm.recv(torch.empty_like(out), self.stage + 1)
            torch.autograd.backward(out, grad)
        if not self.first:
            self.sends.append(comm.isend(h.grad, self.stage - 1))

    def named(self, model):
        """{one-process name: parameter} of every tensor this stage holds."""
        own = {}
        for name, p in model.named_parameters():
            if name.startswith("h."):
                i, rest = name[2:].split(".", 1)
                name = f"h.{int(i) + self.stage * self.per}.{rest}"
            own[name] = p
        return own

    def owned(self, model):
        """named(), the last stage's copy of a tied embedding left out (the first stage's is the
        one)."""
        own = self.named(model)
        if self.tied and self.last:
            own.pop("wte.weight")
        return own

    def optimizer(self, param_groups, make_adamw):
        """The project's AdamW on this stage's tensors; resuming, it keeps this stage's part of
        a one-process AdamW state (what for_checkpoint saved)."""
        adamw = make_adamw(param_groups)
        adamw.register_load_state_dict_pre_hook(self.stage_state)
        return adamw

    def stage_state(self, optimizer, state_dict):
        """One process's AdamW state dict -> this stage's: each tensor takes the state of the
        one-process tensor of its name (the last stage's copy of a tied embedding, the
        embedding's: the two get the same all-reduced gradients, so the same updates)."""
        with torch.device("meta"):
            whole = GPT(self.model.config)
        name_of = {id(p): name for name, p in whole.named_parameters()}
        order = [name_of[id(p)] for group in whole.param_groups(0.0) for p in group["params"]]
        saved = {order[i]: state for i, state in state_dict["state"].items()}
        name_of = {id(p): name for name, p in self.named(self.model).items()}
        mine = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
        groups, start = [], 0
        for group, own in zip(state_dict["param_groups"], optimizer.param_groups):
            groups.append({**group, "params": list(range(start, start + len(own["params"])))})
            start += len(own["params"])
        return {"state": {i: saved[name] for i, name in enumerate(mine) if name in saved},
                "param_groups": groups}

    def clip_grad_norm(self, model, max_norm):
        """The one-process norm, bitwise: every tensor's squared sum, summed in the order one
        process sums them (a stage adds zeros for the tensors it does not hold)."""
        own = self.owned(model)
        squares = torch.zeros(len(self.names), dtype=torch.float64, device=self.world.device)
        for i, name in enumerate(self.names):
            if name in own and own[name].grad is not None:
                squares[i] = square_sum(own[name].grad)
        dist.all_reduce(squares)  # a few floats: left out of the byte counts
        total = torch.sqrt(sum(squares[i] for i in range(len(self.names))))
        return clip_grad_norm(model.parameters(), max_norm, total)

    def mean(self, value):
        """A logged value: the last stage's (it alone computes the loss)."""
        value = torch.as_tensor(value, dtype=torch.float32).to(self.world.device, copy=True)
        dist.broadcast(value, src=self.stages - 1)  # logging: not counted
        return value

    @torch.no_grad()
    def forward_all(self, idx, targets=None, cache=None, start=0):
        """(logits, loss) of the whole model on every rank; every rank calls it with the same
        inputs. Not counted as a step's bytes (evaluation runs between steps)."""
        if cache is not None or start:
            raise ConfigError("a pipeline stage cannot decode with a KV cache: sample from the "
                              "checkpoint (mini-llm sample RUN)")
        model, (B, T) = self.model, idx.shape
        if self.first:
            h, rope = model.embed(idx)
        else:
            h = comm.recv(idx.new_empty((B, T, model.config.n_embd), dtype=self.dtype), self.stage - 1)
            rope = model.rope(T, 0, idx.device)
        h = model.blocks(h, rope)
        if not self.last:
            comm.isend(h, self.stage + 1).wait()
            logits = idx.new_empty((B, T, model.config.vocab_size), dtype=torch.float32)
            loss = idx.new_empty((), dtype=torch.float32)
        else:
            logits, loss = model.head(h, targets)
            logits = logits.float().contiguous()
            loss = idx.new_zeros((), dtype=torch.float32) if loss is None else loss.float()
        dist.broadcast(logits, src=self.stages - 1)
        dist.broadcast(loss, src=self.stages - 1)
        return logits, (loss if targets is not None else None)

    def for_checkpoint(self, model, optimizer):
        """The one-process model and AdamW state, gathered from the stages on rank 0 (a
        collective); the other ranks get (None, None): only rank 0 writes."""
        owned = self.owned(model)
        name_of = {id(p): name for name, p in owned.items()}
        states = {name_of[id(p)]: {k: v.cpu() for k, v in optimizer.state[p].items()}
                  for group in optimizer.param_groups for p in group["params"]
                  if id(p) in name_of and p in optimizer.state}
        mine = ({name: p.detach().cpu() for name, p in owned.items()}, states)
        gathered = [None] * self.stages if self.is_main else None
        dist.gather_object(mine, gathered, dst=0)
        if not self.is_main:
            return None, None
        params = {k: v for stage_params, _ in gathered for k, v in stage_params.items()}
        states = {k: v for _, stage_states in gathered for k, v in stage_states.items()}
        with torch.device("meta"):  # one process's parameter order and optimizer groups
            whole = GPT(model.config)
        name_of = {id(p): name for name, p in whole.named_parameters()}
        opt, index = {"state": {}, "param_groups": []}, 0
        for group, mine in zip(whole.param_groups(0.0), optimizer.param_groups):
            settings = {k: v for k, v in mine.items() if k != "params"}
            indices = list(range(index, index + len(group["params"])))
            opt["param_groups"].append({**settings, "params": indices})
            for p in group["params"]:
                if name_of[id(p)] in states:
                    opt["state"][index] = states[name_of[id(p)]]
                index += 1
        return Snapshot({name: params[name] for name in name_of.values()}), Snapshot(opt)
