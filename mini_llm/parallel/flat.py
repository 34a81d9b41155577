"""Parameters laid end to end in one flat buffer and cut into N equal shards: what ZeRO and
FSDP build on.

    full   [ p0 | p1 | p2 ... | pad ]   numel padded up to a multiple of N; the parameters
                                        are views into it (p.data = full[offset:...])
    shard  [ rank r's N-th of full ]    rank r owns elements [r S, (r+1) S), S = padded / N

The optimizer only ever sees this rank's shard, as one piece per parameter that overlaps it
(a piece keeps its parameter's weight-decay group). An all-gather of the shards rebuilds
`full`; a reduce-scatter of the gradients, laid out the same way, gives each rank the sum of
its shard's gradients.
"""

import math

import torch

from . import comm


class FlatParams:
    def __init__(self, params, world):
        self.params, self.world = list(params), world
        first = self.params[0]
        numel = sum(p.numel() for p in self.params)
        self.shard_size = math.ceil(numel / world.size)
        self.full = torch.zeros(self.shard_size * world.size, dtype=first.dtype, device=first.device)
        self.offsets = []
        offset = 0
        with torch.no_grad():
            for p in self.params:
                self.full[offset:offset + p.numel()] = p.reshape(-1)
                p.data = self.full[offset:offset + p.numel()].view_as(p)
                self.offsets.append(offset)
                offset += p.numel()
        lo = world.rank * self.shard_size
        self.shard = self.full[lo:lo + self.shard_size].clone()  # this rank's, in its own memory
        self.grad_shard = torch.zeros_like(self.shard)
        self.grad_full = None  # see keep_grads_flat

    def keep_grads_flat(self):
        """Make the parameters' .grad views into one flat buffer laid out like `full`: autograd
        accumulates into an existing .grad in place, so the gradients are born flat and are
        reduce-scattered without being copied first."""
        self.grad_full = torch.zeros_like(self.full)
        for p, offset in zip(self.params, self.offsets):
            p.grad = self.grad_full[offset:offset + p.numel()].view_as(p)

    def zero_grads(self):
        self.grad_shard.zero_()
        if self.grad_full is not None:
            self.grad_full.zero_()
        else:
            for p in self.params:
                p.grad = None

    def pieces(self):
        """(parameter, its first element in this shard, where in the shard: a slice) for each
        parameter that overlaps this rank's shard. shard[where] is a view: the optimizer's
        in-place updates land in the shard."""
        lo, hi = self.world.rank * self.shard_size, (self.world.rank + 1) * self.shard_size
        for p, offset in zip(self.params, self.offsets):
            a, b = max(lo, offset), min(hi, offset + p.numel())
            if a < b:
                yield p, a - offset, slice(a - lo, b - lo)

    def flat_grads(self):
        """The parameters' gradients laid out like `full` (zeros in the padding)."""
        if self.grad_full is not None:
            return self.grad_full
        grads = [p.grad.reshape(-1) for p in self.params]
        pad = self.full.numel() - sum(g.numel() for g in grads)
        return torch.cat(grads + [grads[0].new_zeros(pad)])

    def reduce_scatter_grads(self):
        """Start summing the gradients over ranks into this rank's part; returns
        (work, result): the caller waits, then adds result / N to grad_shard."""
        result = torch.empty_like(self.grad_shard)
        return comm.reduce_scatter(result, self.flat_grads(), async_op=True), result

    def all_gather(self):
        """full <- every rank's shard."""
        comm.all_gather(self.full, self.shard)

    def gathered_state(self, shard_tensor):
        """A shard-shaped tensor (e.g. Adam's exp_avg over this shard) gathered into one tensor
        per parameter: what a one-process run would hold."""
        full = torch.empty_like(self.full)
        comm.all_gather(full, shard_tensor)
        return [full[o:o + p.numel()].view_as(p).clone() for p, o in zip(self.params, self.offsets)]


class InFlight:
    """Reduce-scatters started but not yet added into their gradient shards. At most `limit`
    stay in flight: each holds a flat copy of its gradients until it is waited for, and letting
    them pile up through the backward would hold as much as the full gradients ZeRO-2 and FSDP
    are there to avoid."""

    def __init__(self, world_size, limit=1):
        self.world_size, self.limit, self.queue = world_size, limit, []

    def start(self, flat):
        self.queue.append((flat, *flat.reduce_scatter_grads()))
        while len(self.queue) > self.limit:
            self.finish_one()

    def drain(self):
        while self.queue:
            self.finish_one()

    def finish_one(self):
        flat, work, result = self.queue.pop(0)
        work.wait()
        flat.grad_shard.add_(result.div_(self.world_size))
