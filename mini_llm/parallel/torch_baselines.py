"""torch's own data-parallel wrappers, the baselines the strategies written here are compared
with: `--parallel ddp-torch` (DistributedDataParallel) and `fsdp-torch` (FSDP2's fully_shard
per block, then the root).

ddp-torch's all-reduces go through a communication hook that calls comm.all_reduce, so its
bytes are counted like ours. fsdp-torch's collectives are torch's own and are not counted.
"""

from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from . import comm
from .strategy import Snapshot, Strategy, broadcast_model, sharded_clip_grad_norm


class TorchDDP(Strategy):
    """torch.nn.parallel.DistributedDataParallel, its all-reduces counted."""

    def wrap(self, model):
        broadcast_model(model)  # DDP broadcasts too; this counts the bytes like ddp.py
        self.ddp = DistributedDataParallel(model, device_ids=None if self.world.device == "cpu"
                                           else [self.world.local_rank], bucket_cap_mb=1)
        self.ddp.register_comm_hook(self.world.size, counted_all_reduce)
        return self.ddp

    def micro_batch(self, last):
        return super().micro_batch(last) if last else self.ddp.no_sync()


def counted_all_reduce(world_size, bucket):
    """DDP's default hook (sum, then divide by N), through comm.all_reduce."""
    work = comm.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0].div_(world_size))


class FSDPTorch(Strategy):
    """torch's FSDP2: fully_shard on each block, then on the model."""

    def wrap(self, model):
        broadcast_model(model)
        for block in model.h:
            fully_shard(block)
        fully_shard(model)
        self.model = model
        return model

    def optimizer(self, param_groups, make_adamw):
        optimizer = make_adamw(param_groups)
        optimizer.register_load_state_dict_post_hook(shard_loaded_state)  # resuming
        return optimizer

    def micro_batch(self, last):
        self.model.set_requires_gradient_sync(last)  # reduce-scatter once per step
        return super().micro_batch(last)

    def clip_grad_norm(self, model, max_norm):
        grads = [p.grad.to_local() for p in model.parameters() if p.grad is not None]
        return sharded_clip_grad_norm(grads, max_norm, self.world)

    def for_checkpoint(self, model, optimizer):
        def full(value):
            return value.full_tensor() if isinstance(value, DTensor) else value

        opt = optimizer.state_dict()
        opt["state"] = {i: {k: full(v) for k, v in s.items()} for i, s in opt["state"].items()}
        return Snapshot({k: full(v) for k, v in model.state_dict().items()}), Snapshot(opt)


def shard_loaded_state(optimizer):
    """A checkpoint holds AdamW's state whole; the sharded parameters need it sharded alike."""
    for p, state in optimizer.state.items():
        for name, value in state.items():
            if value.dim() > 0 and not isinstance(value, DTensor):
                state[name] = distribute_tensor(value, p.device_mesh, p.placements)
