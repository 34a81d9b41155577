"""How a parallel strategy plugs into the training loop (mini_llm/loop.py).

A strategy turns the one-process run of train.py into N cooperating processes (ranks), and
nothing else in the loop changes. train.py builds the model exactly as for one process (same
seed, same weights on every rank), then:

    world = groups.init(device)                          # torchrun's env vars -> process group
    strategy = STRATEGIES[name](world)                   # a Strategy, e.g. ddp.DDP
    step_model = strategy.wrap(model)                    # broadcast / shard / wrap the model
    optimizer = strategy.optimizer(model.param_groups(wd), make_adamw)  # make_adamw(groups) -> AdamW
    Run(cfg, model, optimizer, ..., step_model=step_model, ranks=strategy)

`model` stays the plain GPT (what is evaluated and saved); `step_model` is what the training
forward runs (the same module, or a wrapper such as torch's DistributedDataParallel). The
optimizer may be a sharded wrapper around the project's AdamW; the loop calls its step() and
zero_grad() as for one process.

The strategy is the Run's `ranks`: it has every hook of loop.SingleProcess, with these meanings

  is_main                       rank 0: only it prints, logs and writes checkpoints
  local_batch(batch)            the global micro-batch (a tuple of tensors, the same on every
                                rank: task.batch(it, micro)) -> this rank's part. Data parallel
                                strategies take rows [r B/N, (r+1) B/N); B must divide by N.
                                The loss is a mean over equal slices, so the mean of the ranks'
                                gradients is the one-process gradient of the global batch.
  step()                        the context one optimizer step runs in (bytes are counted per step)
  micro_batch(last)             the context of each micro-batch's forward and backward: data
                                parallel syncs gradients only when last is True
  clip_grad_norm(model, m)      clip by the norm over all ranks' (possibly sharded) gradients
  mean(value)                   a logged scalar averaged over the ranks
  record()                      extra fields for the train log: global batch, bytes sent
  for_checkpoint(model, opt)    -> (model, optimizer) whose state_dict() is the full one-process
                                state. Collective: EVERY rank calls it (sharded strategies gather
                                parameters and optimizer state); only rank 0 writes the file, so a
                                checkpoint of an N-rank run is the same file a one-process run
                                writes, and it resumes or samples anywhere.

Evaluation runs task.evaluate(model) on every rank on the same batches (fsdp's all-gathers
need every rank to run its forward); rank 0 logs it.
Dropout: the loop seeds the masks per iteration, so each rank draws masks for its slice from
the same stream: equal to one process only with dropout 0 (the tests use 0).

A tensor or pipeline strategy follows the same interface: its local_batch may return the whole
batch (tensor parallel) or the micro-batches of its stage (pipeline), and its
for_checkpoint gathers its shards into the full model.
"""

from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

from ..loop import SingleProcess, split_rows
from ..optim import square_sum
from . import comm


class Strategy(SingleProcess):
    """The hooks common to the data-parallel strategies; each subclass wraps the model and
    makes the optimizer. `world` is a groups.World."""

    def __init__(self, world, global_batch=None):
        self.world = world
        self.is_main = world.rank == 0
        self.global_batch = global_batch  # sequences per optimizer step, all ranks (for the log)
        self.bytes = comm.counter

    def wrap(self, model):
        raise NotImplementedError

    def optimizer(self, param_groups, make_adamw):
        """The optimizer over `param_groups` (the model's, as one process makes them)."""
        return make_adamw(param_groups)

    def local_batch(self, batch):
        return tuple(split_rows(t, self.world.rank, self.world.size) for t in batch)

    @contextmanager
    def step(self):
        self.bytes.start_step()
        yield
        self.bytes.end_step()

    def micro_batch(self, last):
        return nullcontext()

    def mean(self, value):
        value = torch.as_tensor(value, dtype=torch.float64).to(self.world.device)
        dist.all_reduce(value)  # logging: not counted in the strategy's bytes
        return value / self.world.size

    def record(self):
        return {"ranks": self.world.size, "global_batch": self.global_batch,
                "bytes_sent": self.bytes.last_step}

    def for_checkpoint(self, model, optimizer):
        return model, optimizer


def broadcast_model(model):
    """Every rank gets rank 0's parameters and buffers."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            comm.broadcast(t, src=0)


def sharded_clip_grad_norm(local_grads, max_norm, world):
    """Clip by the global norm when each rank holds a disjoint part of the gradients: the
    squared norms of the parts add up (one scalar all-reduce, not counted as a step's bytes),
    in float64, so the factor is one process's (optim.square_sum)."""
    squares = sum(square_sum(g) for g in local_grads)
    total = torch.as_tensor(squares, dtype=torch.float64, device=world.device).clone()
    dist.all_reduce(total)
    total = total.sqrt()
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in local_grads:
        g.mul_(scale.to(g.dtype))
    return total.float()


class Snapshot:
    """A state dict that was gathered already, in the form save_checkpoint reads."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state
