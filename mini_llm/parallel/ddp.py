"""Data parallel, written here (`--parallel ddp`): every rank holds the whole model and
optimizer, runs its slice of the batch, and the ranks average their gradients.

  1. wrap: rank 0's parameters and buffers are broadcast, so every rank starts equal (they
     already are, from the same seed; the broadcast makes it true by construction).
  2. backward: autograd calls a hook on a parameter as soon as its gradient is accumulated
     (register_post_accumulate_grad_hook). Parameters are grouped into buckets of about
     `bucket_bytes`, in the order the backward produces them (the reverse of the forward); when
     the last gradient of a bucket arrives the bucket is copied into one flat tensor and its
     all-reduce starts asynchronously, while the backward goes on computing earlier layers'
     gradients (communication overlapped with computation). bucket_bytes=0: one all-reduce
     per parameter, each launched the moment its gradient exists.
  3. after the backward: wait for every bucket, divide the sums by N, copy them back to .grad.
     Every rank now holds the same mean gradient, so each runs the same optimizer step.

Gradient accumulation: on all but the last micro-batch the hooks do nothing and the gradients
accumulate locally; one all-reduce per step, of the summed gradients (the same result for a
sum is linear). Tied parameters (the embedding reused as the output head) are one tensor
with one gradient: model.parameters() lists them once, so they are reduced once. Frozen
parameters (requires_grad False) get no gradient and are neither bucketed nor reduced.

Bytes per optimizer step: a ring all-reduce of every gradient, 2 (N-1)/N x 4 P.
"""

import torch

from . import comm
from .strategy import Strategy, broadcast_model

BUCKET_BYTES = 1 << 20  # torch's DDP uses 25 MiB; the models here are small


class DDP(Strategy):
    """Data parallel with bucketed, overlapped all-reduces (the module's docstring)."""

    def __init__(self, world, global_batch=None, bucket_bytes=BUCKET_BYTES):
        super().__init__(world, global_batch)
        self.bucket_bytes, self.sync = bucket_bytes, True

    def wrap(self, model):
        broadcast_model(model)
        params = [p for p in model.parameters() if p.requires_grad]  # tied: once; frozen: none
        self.buckets = [Bucket(b) for b in group_by_bytes(params[::-1], self.bucket_bytes)]
        self.bucket_of = {p: b for b in self.buckets for p in b.params}
        for p in params:
            p.register_post_accumulate_grad_hook(self.grad_ready)
        return model

    def micro_batch(self, last):
        self.sync = last
        return self if last else super().micro_batch(last)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:  # the backward of the last micro-batch is done
            self.finish()

    def grad_ready(self, p):
        if not self.sync:
            return
        bucket = self.bucket_of[p]
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            bucket.start()

    def finish(self):
        for bucket in self.buckets:
            bucket.finish(self.world.size, self.world.rank)


class Bucket:
    """Parameters whose gradients are all-reduced together, as one flat tensor."""

    def __init__(self, params):
        self.params, self.ready, self.work, self.flat = params, 0, None, None

    def start(self):
        if len(self.params) == 1:  # reduce the gradient in place: no copy
            self.flat = self.params[0].grad
        else:
            self.flat = torch.cat([p.grad.reshape(-1) for p in self.params])
        self.work = comm.all_reduce(self.flat, async_op=True)

    def finish(self, world_size, rank):
        if self.work is None:
            missing = [tuple(p.shape) for p in self.params if p.grad is None]
            raise RuntimeError(f"rank {rank}: parameters of shapes {missing} got no gradient; ddp "
                               "needs every trainable parameter used in every step")
        self.work.wait()
        self.flat.div_(world_size)
        if len(self.params) > 1:
            offset = 0
            for p in self.params:
                p.grad.copy_(self.flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        self.ready, self.work, self.flat = 0, None, None


def group_by_bytes(params, bucket_bytes):
    """Consecutive parameters grouped until a group holds at least bucket_bytes (0: one each)."""
    groups, current, size = [], [], 0
    for p in params:
        current.append(p)
        size += p.numel() * p.element_size()
        if size >= bucket_bytes:
            groups.append(current)
            current, size = [], 0
    return groups + [current] if current else groups
