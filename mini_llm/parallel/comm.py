"""The collectives the strategies use, each counting the bytes this rank sends.

With the ring algorithms (what NCCL and gloo use for large tensors), for a tensor of n bytes
on N ranks every rank sends:

  all-reduce       2 (N-1)/N n   a reduce-scatter then an all-gather around the ring
  reduce-scatter     (N-1)/N n   n: the full input; each rank ends with its n/N reduced
  all-gather         (N-1)/N n   n: the full output; each rank starts with its n/N
  broadcast                  n   from the root (counted for the root only)
  send                       n   point to point (pipeline stages); a receive sends nothing

The formulas are in costs.py, shared with the planner (plan.py). The counts are of these
formulas applied to the tensors actually sent: the tests check that
what a strategy sends per step adds up to its formula in parameters (every gradient reduced
exactly once, every shard gathered once).
"""

from collections import defaultdict

import torch.distributed as dist

from .costs import all_gather_bytes, all_reduce_bytes, reduce_scatter_bytes


class Counter:
    """Bytes this rank sent in the last optimizer step (between start_step and end_step; what
    evaluation and checkpoints send in between is not part of a step), in all and per kind."""

    def __init__(self):
        self.step_bytes, self.last_step, self.last_payload = 0, 0, {}
        self.payload = defaultdict(int)  # kind -> bytes of the tensors handed to it, this step

    def start_step(self):
        self.step_bytes, self.payload = 0, defaultdict(int)

    def end_step(self):
        self.last_step, self.last_payload = self.step_bytes, dict(self.payload)

    def add(self, kind, payload, sent):
        self.payload[kind] += payload
        self.step_bytes += round(sent)


counter = Counter()  # one per process: every strategy's collectives count here

# torch 2.13 renamed the single-tensor collectives; older versions (2.11 on the GPU machines)
# have only the old names.
_all_gather_single = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


def _ranks(group):
    return dist.get_world_size(group)  # a group's ranks: a tensor-parallel group is a subset


def nbytes(t):
    return t.numel() * t.element_size()


def all_reduce(tensor, async_op=False, group=None):
    """Sum over ranks, in place."""
    counter.add("all_reduce", nbytes(tensor), all_reduce_bytes(nbytes(tensor), _ranks(group)))
    return dist.all_reduce(tensor, async_op=async_op, group=group)


def reduce_scatter(output, input, async_op=False, group=None):
    """output (n/N) <- this rank's part of the sum over ranks of input (n)."""
    counter.add("reduce_scatter", nbytes(input), reduce_scatter_bytes(nbytes(input), _ranks(group)))
    return _reduce_scatter_single(output, input, async_op=async_op, group=group)


def all_gather(output, input, async_op=False, group=None):
    """output (n) <- the ranks' inputs (n/N each), in rank order."""
    counter.add("all_gather", nbytes(output), all_gather_bytes(nbytes(output), _ranks(group)))
    return _all_gather_single(output, input, async_op=async_op, group=group)


def broadcast(tensor, src=0, group=None):
    counter.add("broadcast", nbytes(tensor), nbytes(tensor) if dist.get_rank() == src else 0)
    return dist.broadcast(tensor, src=src, group=group)


def isend(tensor, dst, group=None):
    """Start sending tensor to rank dst; returns the work to wait on. Sends are asynchronous so
    that two stages that send to each other at once (1F1B) do not both block."""
    counter.add("send", nbytes(tensor), nbytes(tensor))
    return dist.isend(tensor, dst, group=group)


def recv(tensor, src, group=None):
    """Receive into tensor from rank src (blocks until it has arrived)."""
    counter.add("recv", nbytes(tensor), 0)
    dist.recv(tensor, src, group=group)
    return tensor
