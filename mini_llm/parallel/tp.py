"""Tensor parallel, written here (`--parallel tp`, Megatron-LM): every block's matrices split
across the N ranks of a group, each rank computing its share of the heads and of the MLP.

One block on rank r (x, the residual stream, is the same on every rank):

    x --f--> [c_attn: columns of heads r*nh/N .. (r+1)*nh/N - 1 of q, k and v] -> attention
             on those heads -> [attn c_proj: the rows that read those heads] --g--> + bias
    x --f--> [mlp c_fc: columns r*H/N .. (r+1)*H/N - 1 (SwiGLU: of gate and of up)] -> act
             -> [mlp c_proj: the matching rows] --g--> + bias

  column-parallel (c_attn, c_fc): the weight's output rows are split, each rank computes a
      slice of the output from the whole input; no communication in the forward.
  row-parallel (c_proj): the weight's input columns are split, each rank multiplies its slice
      of the input and holds a partial sum of the output: the ranks sum them (g).
  f: identity forward, all-reduce of the input's gradient backward (each rank's columns gave
     only part of dL/dx).
  g: all-reduce forward (the partial sums), identity backward (the sum's gradient is the same
     for every term).

So per block and micro-batch: 2 all-reduces of (B, T, C) activations forward (g, g) and 2
backward (f, f); nothing for the weights, which never move. Attention needs no communication
at all: a head reads only its own q, k and v, so the split must fall on head boundaries (a
split in the middle of a head, or of the packed [q | k | v] rows, computes something else).

What stays whole on every rank: the embeddings, the head (tied to the embedding or not), the
norms and the biases of the row-parallel layers; their gradients come out equal on every rank,
because everything upstream of them is (f and g make the residual stream identical), so they
need no sync. The optimizer updates the local shards and the replicated tensors alike.

Equal to one process up to float rounding, not bitwise: g sums N partial matmuls where one
process sums the same products in one matmul, in another order (tests: 1e-5 relative).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..optim import clip_grad_norm, square_sum
from . import comm
from .strategy import Snapshot, Strategy


class _CopyToRanks(torch.autograd.Function):
    """Megatron's f: the input of a column-parallel layer."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, dy):
        dy = dy.contiguous()  # a fresh tensor: summed in place
        comm.all_reduce(dy, group=ctx.group)
        return dy, None


class _SumOverRanks(torch.autograd.Function):
    """Megatron's g: the output of a row-parallel layer."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous()
        comm.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, dy):
        return dy, None


class ColumnParallelLinear(nn.Module):
    """The output rows `rows` of a Linear: y[..., rows] = x @ W[rows].T + b[rows]."""

    def __init__(self, linear, rows, group):
        super().__init__()
        self.group, self.rows = group, rows
        self.weight = nn.Parameter(linear.weight.detach()[rows].clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach()[rows].clone())

    def forward(self, x):
        return F.linear(_CopyToRanks.apply(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """The input columns `cols` of a Linear; the partial products are summed over the ranks,
    then the (whole, replicated) bias added once."""

    def __init__(self, linear, cols, group):
        super().__init__()
        self.group, self.cols = group, cols
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        y = _SumOverRanks.apply(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


def shard_indices(width, parts, rank, ranks):
    """Rank `rank`'s indices into a dimension of `parts` equal parts (q|k|v: 3; SwiGLU's
    gate|up: 2; otherwise 1) of `width` each: the same slice r/N of every part, so each rank
    keeps whole [q | k | v] of its heads."""
    n = width // ranks
    return torch.cat([torch.arange(p * width + rank * n, p * width + (rank + 1) * n) for p in range(parts)])


def check_divides(config, ranks):
    """Tensor parallelism splits the heads and the MLP's hidden width evenly."""
    if config.n_head % ranks:
        raise ConfigError(f"tensor parallel over {ranks} ranks splits the heads: n_head "
                          f"{config.n_head} is not divisible by {ranks}")
    if config.hidden_width() % ranks:
        raise ConfigError(f"tensor parallel over {ranks} ranks splits the MLP: its hidden width "
                          f"{config.hidden_width()} is not divisible by {ranks}")


def parallelize(model, group=None):
    """Split every block of a GPT across the ranks of `group`, in place; returns the model.
    Every rank must hold the same weights before (the same seed), as one process would."""
    config, ranks, rank = model.config, dist.get_world_size(group), dist.get_rank(group)
    check_divides(config, ranks)
    C, H = config.n_embd, config.hidden_width()
    gate_up = 2 if config.mlp == "swiglu" else 1
    for block in model.h:
        attn, mlp = block.attn, block.mlp
        attn.c_attn = ColumnParallelLinear(attn.c_attn, shard_indices(C, 3, rank, ranks), group)
        attn.c_proj = RowParallelLinear(attn.c_proj, shard_indices(C, 1, rank, ranks), group)
        attn.n_head = config.n_head // ranks
        mlp.c_fc = ColumnParallelLinear(mlp.c_fc, shard_indices(H, gate_up, rank, ranks), group)
        mlp.c_proj = RowParallelLinear(mlp.c_proj, shard_indices(H, 1, rank, ranks), group)
    return model


def sharded_params(model):
    """{parameter: (layer, dim)}: the tensors split across ranks, with the dim they are split on."""
    out = {}
    for module in model.modules():
        if isinstance(module, ColumnParallelLinear):
            out.update({p: (module, 0) for p in (module.weight, module.bias) if p is not None})
        elif isinstance(module, RowParallelLinear):
            out[module.weight] = (module, 1)
    return out


def shard_index(layer):
    """The indices of the whole tensor's dim that a split layer holds."""
    return layer.rows if isinstance(layer, ColumnParallelLinear) else layer.cols


def unshard(tensor, layer, dim, group):
    """The whole tensor from every rank's shard (a collective: every rank calls it)."""
    ranks = dist.get_world_size(group)
    shards, indices = [torch.empty_like(tensor) for _ in range(ranks)], [None] * ranks
    dist.all_gather(shards, tensor.contiguous(), group=group)
    dist.all_gather_object(indices, shard_index(layer), group=group)
    full_shape = list(tensor.shape)
    full_shape[dim] *= ranks
    full = tensor.new_empty(full_shape)
    full.index_copy_(dim, torch.cat(indices).to(full.device), torch.cat(shards, dim=dim))
    return full


class TensorParallel(Strategy):
    """The run's `ranks` (loop.py, strategy.py) for tensor parallelism over `group` (default:
    all ranks): every rank trains on the whole batch, so the loss and what is logged are the
    same on every rank; the gradient norm is taken over all ranks' shards."""

    name = "tp"

    def __init__(self, world, global_batch=None, group=None):
        super().__init__(world, global_batch)
        self.group = group

    def wrap(self, model):
        model = parallelize(model, self.group)
        self.sharded = sharded_params(model)
        return model

    def optimizer(self, param_groups, make_adamw):
        """The project's AdamW on this rank's shards; resuming, it cuts a one-process AdamW
        state (what for_checkpoint saved) as the parameters are cut."""
        adamw = make_adamw(param_groups)
        adamw.register_load_state_dict_pre_hook(self.shard_loaded_state)
        return adamw

    def shard_loaded_state(self, optimizer, state_dict):
        params = [p for group in optimizer.param_groups for p in group["params"]]  # one process's order

        def cut(p, state):
            if p not in self.sharded:
                return state
            layer, dim = self.sharded[p]
            return {k: v.index_select(dim, shard_index(layer).to(v.device)) if v.dim() else v
                    for k, v in state.items()}

        # state_dict is a shallow copy: the checkpoint's own tensors are left whole
        return {**state_dict, "state": {i: cut(params[i], s) for i, s in state_dict["state"].items()}}

    def local_batch(self, batch):
        return batch

    def mean(self, value):
        return value

    def clip_grad_norm(self, model, max_norm):
        """The one-process norm: the replicated gradients counted once, the shards' squares
        summed over the ranks."""
        sharded = {id(p) for p in sharded_params(model)}
        params = [p for p in model.parameters() if p.grad is not None]
        zero = torch.zeros((), dtype=torch.float64, device=self.world.device)
        split = sum((square_sum(p.grad) for p in params if id(p) in sharded), zero)
        dist.all_reduce(split, group=self.group)  # one float: left out of the byte counts
        whole = sum((square_sum(p.grad) for p in params if id(p) not in sharded), zero)
        return clip_grad_norm(params, max_norm, torch.sqrt(whole + split))

    def for_checkpoint(self, model, optimizer):
        """The one-process model and AdamW state, every shard gathered (collective)."""
        sharded = sharded_params(model)

        def whole(p, t):
            return unshard(t, *sharded[p], self.group) if p in sharded else t

        state = {name: whole(p, p.detach()) for name, p in model.named_parameters()}
        opt = optimizer.state_dict()  # parameters by index, the same order as one process's
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            if i in opt["state"]:
                opt["state"][i] = {k: whole(p, v) if v.dim() else v for k, v in opt["state"][i].items()}
        return Snapshot(state), Snapshot(opt)
