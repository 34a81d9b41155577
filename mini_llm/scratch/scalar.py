"""A scalar autograd engine: the chain rule on single numbers, small enough to read in one go.

    a, b = Value(2.0), Value(-3.0)
    c = (a * b + 1).tanh()
    c.backward()            # fills a.grad = dc/da and b.grad = dc/db
    a.grad, b.grad

Each operation returns a new Value that remembers its parents and a `_backward` closure: given
dL/d(out), it returns dL/d(parent) for each parent, the upstream gradient times the local
derivative (the chain rule). `backward()` visits the nodes output-first and adds every
contribution into the parents' `grad`: a value used twice collects two contributions.

Unlike the tensor engine (tensor.py), every node keeps its `grad`, so a learner can print
the gradient at any point of the expression. tests/test_scratch_scalar.py checks each
operation against central finite differences and against torch.autograd.
"""

import math

from .graph import topological_order


class Value:
    def __init__(self, data, _parents=(), _backward=None, op=""):
        self.data = float(data)
        self.grad = 0.0
        self._parents = _parents
        self._backward = _backward  # g -> (contribution to each parent); None for a leaf
        self.op = op  # the operation that made it: "+", "*", "tanh", ... ("" for a leaf)

    def __repr__(self):
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    # Each operation: the forward value, then the local derivative of out w.r.t. each input.

    def __add__(self, other):
        other = as_value(other)
        # d(a+b)/da = 1, d(a+b)/db = 1: the sum passes its gradient through unchanged.
        return Value(self.data + other.data, (self, other), lambda g: (g, g), "+")

    def __mul__(self, other):
        other = as_value(other)
        # d(ab)/da = b, d(ab)/db = a: each factor's gradient is scaled by the other factor.
        return Value(self.data * other.data, (self, other),
                     lambda g: (g * other.data, g * self.data), "*")

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"the exponent must be a number, got {type(exponent).__name__}")
        # d(a^p)/da = p a^(p-1)
        return Value(self.data**exponent, (self,),
                     lambda g: (g * exponent * self.data ** (exponent - 1),), f"**{exponent}")

    def exp(self):
        out = math.exp(self.data)
        return Value(out, (self,), lambda g: (g * out,), "exp")  # d(e^a)/da = e^a

    def log(self):
        if self.data <= 0:
            raise ValueError(f"log of a non-positive number ({self.data})")
        return Value(math.log(self.data), (self,), lambda g: (g / self.data,), "log")

    def tanh(self):
        out = math.tanh(self.data)
        return Value(out, (self,), lambda g: (g * (1.0 - out * out),), "tanh")

    def relu(self):
        # The derivative at exactly 0 is taken to be 0, as PyTorch does.
        return Value(max(self.data, 0.0), (self,),
                     lambda g: (g * (self.data > 0),), "relu")

    # Everything else is built from the operations above, so it needs no backward of its own.

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-as_value(other))

    def __truediv__(self, other):
        return self * as_value(other) ** -1

    def __radd__(self, other):
        return self + other

    def __rmul__(self, other):
        return self * other

    def __rsub__(self, other):
        return as_value(other) - self

    def __rtruediv__(self, other):
        return as_value(other) / self

    def backward(self):
        """dself/dx for every Value x this one was computed from, into x.grad.

        The seed is dself/dself = 1. Gradients are added, not assigned: call zero_grad on the
        leaves (or build a fresh expression) before a second backward.
        """
        order = topological_order(self)
        for node in order:
            if node._backward is not None:
                node.grad = 0.0  # intermediate nodes start clean; leaves keep accumulating
        self.grad = 1.0
        for node in reversed(order):  # outputs first: a node is done when all users are
            if node._backward is None:
                continue
            for parent, contribution in zip(node._parents, node._backward(node.grad)):
                parent.grad += contribution


def as_value(x):
    return x if isinstance(x, Value) else Value(x)
