"""Modules: parameters bundled with the function that uses them (Linear, Embedding, LayerNorm,
MLP), in the shape of torch.nn so that one reads like the other.

A Module's parameters are the Tensors with requires_grad=True among its attributes, and those
of its sub-modules, named by their path ("mlp.c_fc.weight"), as torch's named_parameters.
Weights are laid out as PyTorch's (Linear.weight is (out, in)), so a state copies over by name.
"""

import numpy as np

from . import functional as F
from .tensor import ShapeError, Tensor


class Module:
    training = True  # read by dropout; train() / eval() set it on every sub-module

    def __call__(self, *args):
        return self.forward(*args)

    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def load_state(self, arrays):
        """Copy {name: array} into the parameters of the same names, e.g. from a PyTorch
        module: {name: t.detach().numpy() for name, t in module.named_parameters()}."""
        ours = dict(self.named_parameters())
        if arrays.keys() != ours.keys():
            raise KeyError(f"parameter names differ: missing {sorted(ours.keys() - arrays.keys())}, "
                           f"unexpected {sorted(arrays.keys() - ours.keys())}")
        for name, p in ours.items():
            if tuple(arrays[name].shape) != p.shape:
                raise ShapeError(f"{name}: got shape {tuple(arrays[name].shape)}, the parameter "
                                 f"is {p.shape}")
            p.data = np.array(arrays[name], dtype=p.dtype)

    def num_params(self):
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        self.training = mode
        for value in vars(self).values():
            if isinstance(value, Module):
                value.train(mode)
        return self

    def eval(self):
        return self.train(False)


def parameter(data, dtype):
    return Tensor(np.asarray(data, dtype=dtype), requires_grad=True)


class Linear(Module):
    """y = x @ weight^T + bias; weight (out, in). PyTorch's initialisation: uniform in
    +-1/sqrt(in), which keeps the output's variance near the input's."""

    def __init__(self, n_in, n_out, bias=True, rng=None, dtype=np.float32):
        rng = rng or np.random.default_rng(0)
        bound = 1.0 / np.sqrt(n_in)
        self.weight = parameter(rng.uniform(-bound, bound, (n_out, n_in)), dtype)
        self.bias = parameter(rng.uniform(-bound, bound, n_out), dtype) if bias else None

    def forward(self, x):  # (..., in) -> (..., out)
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class Embedding(Module):
    """A table of n vectors; forward(ids) picks rows. Initialised N(0, 1), as PyTorch does."""

    def __init__(self, n, dim, rng=None, dtype=np.float32):
        rng = rng or np.random.default_rng(0)
        self.weight = parameter(rng.standard_normal((n, dim)), dtype)

    def forward(self, ids):  # (...) integers -> (..., dim)
        return F.embedding(self.weight, ids)


class LayerNorm(Module):
    def __init__(self, dim, bias=True, eps=1e-5, dtype=np.float32):
        self.eps = eps
        self.weight = parameter(np.ones(dim), dtype)
        self.bias = parameter(np.zeros(dim), dtype) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


ACTIVATIONS = {"tanh": Tensor.tanh, "relu": Tensor.relu, "gelu": F.gelu}


class MLP(Module):
    """Linear -> activation -> Linear. Named as GPT-2's MLP (and model.py's), c_fc and c_proj,
    so the transformer block's weights copy over by name."""

    def __init__(self, n_in, n_hidden, n_out, activation="gelu", bias=True, rng=None,
                 dtype=np.float32):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        rng = rng or np.random.default_rng(0)
        self.activation = activation
        self.c_fc = Linear(n_in, n_hidden, bias, rng, dtype)
        self.c_proj = Linear(n_hidden, n_out, bias, rng, dtype)

    def forward(self, x):
        return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x)))
