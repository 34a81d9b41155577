"""The tensor autograd engine: NumPy arrays that remember how they were made.

    x = Tensor(np.random.randn(4, 3), requires_grad=True)
    w = Tensor(np.random.randn(3, 2), requires_grad=True)
    loss = (x @ w).tanh().sum()
    loss.backward()          # x.grad, w.grad: arrays of x's and w's shapes

The same idea as the scalar engine (scalar.py), one array at a time. An operation computes
its output with NumPy and, if any input requires a gradient, records its inputs (`_parents`)
and a `_backward` closure: given G = dL/d(out), an array of out's shape, it returns dL/d(input)
for each input, an array of that input's shape. That is the chain rule with matrices:

    out = a + b       dL/da = G                  dL/db = G
    out = a * b       dL/da = G * b              dL/db = G * a        (elementwise)
    out = a @ b       dL/da = G @ b^T            dL/db = a^T @ G
    out = a.sum()     dL/da = G, copied to every element a summed over

Broadcasting adds one rule: an input that was stretched to a bigger shape was used in many
places, so its gradient is the sum over those places (`unbroadcast`).

Only leaves (tensors made by the user, e.g. parameters) keep `.grad` after backward, added to
what they held (call zero_grad between steps); intermediate gradients are freed as soon as
they have been passed on, as PyTorch does. Data is float32 or float64, never mixed: mixing is
an error, not a silent upcast. functional.py adds softmax, cross-entropy, layer norm, ...
"""

import numbers
from contextlib import contextmanager

import numpy as np

from ..errors import MiniLLMError
from .graph import topological_order

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_recording = True  # False inside no_grad(): operations build no graph


class ShapeError(MiniLLMError, ValueError):
    """Shapes that do not fit the operation; the message names them."""


class DTypeError(MiniLLMError, TypeError):
    """float32 and float64 mixed in one operation, or a dtype the engine does not handle."""


@contextmanager
def no_grad():
    """Evaluate without recording a graph: faster, and nothing is kept for backward."""
    global _recording
    previous, _recording = _recording, False
    try:
        yield
    finally:
        _recording = previous


class Tensor:
    # Makes `ndarray + Tensor` call Tensor.__radd__ instead of NumPy looping over elements.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, dtype=None):
        data = np.asarray(data, dtype=dtype)
        if dtype is None and data.dtype.kind in "biu":  # Python ints and lists of them
            data = data.astype(np.float64)
        if data.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"Tensor data must be float32 or float64, got {data.dtype} "
                             f"(shape {data.shape})")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._parents = ()
        self._backward = None  # G -> (dL/d(parent) for each parent); None for a leaf
        self.op = ""  # the operation that made it, shown by repr: a graph you can inspect

    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __repr__(self):
        made_by = f", op={self.op!r}" if self.op else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{made_by})"

    def item(self):
        return self.data.item()

    # ---- operands --------------------------------------------------------------------------

    def _other(self, other, op):
        """`other` as a Tensor of this one's dtype; a Python number takes our dtype."""
        if isinstance(other, numbers.Number):
            return Tensor(np.asarray(other, dtype=self.dtype))
        if not isinstance(other, Tensor):
            other = Tensor(other)
        if other.dtype != self.dtype:
            raise DTypeError(f"{op}: cannot mix {self.dtype} {self.shape} with {other.dtype} "
                             f"{other.shape}; convert one first (e.g. Tensor(x, dtype=...))")
        return other

    def _elementwise(self, other, op):
        """`other` as a Tensor whose shape broadcasts against this one's."""
        other = self._other(other, op)
        try:
            np.broadcast_shapes(self.shape, other.shape)
        except ValueError:
            raise ShapeError(f"{op}: shapes {self.shape} and {other.shape} do not broadcast "
                             "(trailing dimensions must be equal or 1)") from None
        return other

    # ---- elementwise arithmetic, broadcasting ---------------------------------------------

    def __add__(self, other):
        other = self._elementwise(other, "add")
        return make(self.data + other.data, (self, other),
                    lambda g: (unbroadcast(g, self.shape), unbroadcast(g, other.shape)), "add")

    def __sub__(self, other):
        other = self._elementwise(other, "sub")
        return make(self.data - other.data, (self, other),
                    lambda g: (unbroadcast(g, self.shape), unbroadcast(-g, other.shape)), "sub")

    def __mul__(self, other):
        other = self._elementwise(other, "mul")
        return make(self.data * other.data, (self, other),
                    lambda g: (unbroadcast(g * other.data, self.shape),
                               unbroadcast(g * self.data, other.shape)), "mul")

    def __truediv__(self, other):
        other = self._elementwise(other, "div")
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        return make(self.data / other.data, (self, other),
                    lambda g: (unbroadcast(g / other.data, self.shape),
                               unbroadcast(-g * self.data / other.data**2, other.shape)), "div")

    def __neg__(self):
        return make(-self.data, (self,), lambda g: (-g,), "neg")

    def __pow__(self, exponent):
        if not isinstance(exponent, numbers.Number):
            raise TypeError(f"the exponent must be a number, got {type(exponent).__name__}")
        p = self.dtype.type(exponent)  # keeps float32 data float32
        return make(self.data**p, (self,),
                    lambda g: (g * p * self.data ** (p - 1),), f"pow {exponent}")

    def __radd__(self, other):
        return self._other(other, "add") + self

    def __rsub__(self, other):
        return self._other(other, "sub") - self

    def __rmul__(self, other):
        return self._other(other, "mul") * self

    def __rtruediv__(self, other):
        return self._other(other, "div") / self

    # ---- matrix product --------------------------------------------------------------------

    def __matmul__(self, other):
        """(..., m, k) @ (..., k, n) -> (..., m, n); the leading (batch) dimensions broadcast."""
        other = self._other(other, "matmul")
        a, b = self.shape, other.shape
        if len(a) < 2 or len(b) < 2:
            raise ShapeError(f"matmul: {a} @ {b}: both operands need 2 or more dimensions "
                             "(reshape a vector to (1, k) or (k, 1))")
        if a[-1] != b[-2]:
            raise ShapeError(f"matmul: {a} @ {b}: the inner dimensions differ "
                             f"({a[-1]} columns vs {b[-2]} rows)")
        try:
            np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            raise ShapeError(f"matmul: {a} @ {b}: the batch dimensions {a[:-2]} and {b[:-2]} "
                             "do not broadcast") from None

        def backward(g):  # g: (..., m, n)
            grad_a = unbroadcast(g @ np.swapaxes(other.data, -1, -2), a)  # G @ B^T
            if len(b) == 2:
                # A linear layer: b is one matrix shared by every row of every batch. Fold the
                # batch into the rows so A^T @ G is one (k, rows) @ (rows, n) product, instead
                # of one product per batch element summed afterwards.
                rows = self.data.reshape(-1, a[-1])
                grad_b = rows.T @ g.reshape(-1, b[-1])
            else:
                grad_b = unbroadcast(np.swapaxes(self.data, -1, -2) @ g, b)  # A^T @ G
            return grad_a, grad_b

        return make(self.data @ other.data, (self, other), backward, "matmul")

    # ---- reductions ------------------------------------------------------------------------

    def sum(self, axis=None, keepdims=False):
        axes = self._axes(axis)
        # Every element that was summed moved the sum one for one: G is copied back to each.
        return make(self.data.sum(axis=axes, keepdims=keepdims), (self,),
                    lambda g: (expand(g, axes, keepdims, self.shape),), "sum")

    def mean(self, axis=None, keepdims=False):
        axes = self._axes(axis)
        count = int(np.prod([self.shape[i] for i in axes]))
        return self.sum(axes, keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims=False):
        """The largest element; the gradient goes to it (split evenly between ties, as
        torch.amax does)."""
        axes = self._axes(axis)
        top = self.data.max(axis=axes, keepdims=True)

        def backward(g):
            winners = self.data == top
            share = winners / winners.sum(axis=axes, keepdims=True)
            return (expand(g, axes, keepdims, self.shape) * share.astype(self.dtype),)

        out = top if keepdims else top.squeeze(axes)
        return make(out, (self,), backward, "max")

    def _axes(self, axis):
        """`axis` (None, an int or a tuple, negative allowed) as a sorted tuple of axes."""
        if axis is None:
            return tuple(range(self.ndim))
        axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
        for ax in axes:
            if not -self.ndim <= ax < self.ndim:
                raise ShapeError(f"axis {ax} is out of range for shape {self.shape}")
        return tuple(sorted(ax % self.ndim for ax in axes))

    # ---- shape and indexing ------------------------------------------------------------------

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ShapeError(f"cannot reshape {self.shape} ({self.size} elements) to "
                             f"{tuple(shape)}") from None
        return make(data, (self,), lambda g: (g.reshape(self.shape),), "reshape")

    def transpose(self, *axes):
        """Permute the axes (default: reverse them), as numpy.transpose."""
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(axes) or tuple(reversed(range(self.ndim)))
        if sorted(ax % self.ndim for ax in axes) != list(range(self.ndim)):
            raise ShapeError(f"transpose: {axes} is not a permutation of the axes of {self.shape}")
        inverse = tuple(np.argsort([ax % self.ndim for ax in axes]))
        return make(self.data.transpose(axes), (self,),
                    lambda g: (g.transpose(inverse),), "transpose")

    T = property(lambda self: self.transpose())

    def __getitem__(self, index):
        """NumPy indexing. The gradient flows back to the picked elements; an element picked
        twice (fancy indexing with repeats) gets both contributions."""
        if isinstance(index, Tensor):
            raise TypeError("index with a NumPy array of integers or booleans, not a Tensor")

        def backward(g):
            grad = np.zeros_like(self.data)
            if is_basic_index(index):
                grad[index] = g  # slices and integers never pick an element twice
            else:
                np.add.at(grad, index, g)
            return (grad,)

        return make(self.data[index], (self,), backward, "getitem")

    # ---- elementwise functions -----------------------------------------------------------------

    def exp(self):
        out = np.exp(self.data)
        return make(out, (self,), lambda g: (g * out,), "exp")

    def log(self):
        return make(np.log(self.data), (self,), lambda g: (g / self.data,), "log")

    def tanh(self):
        out = np.tanh(self.data)

        def backward(g):
            # g * (1 - out^2), d tanh(a)/da = 1 - tanh(a)^2, written into one new buffer
            # instead of three temporaries: measurably faster on a 512 x 1024 hidden layer.
            local = np.multiply(out, out, out=np.empty_like(out))
            np.subtract(1, local, out=local)
            local *= g
            return (local,)

        return make(out, (self,), backward, "tanh")

    def relu(self):
        return make(np.maximum(self.data, 0), (self,),
                    lambda g: (g * (self.data > 0),), "relu")

    # ---- backprop --------------------------------------------------------------------------------

    def backward(self, grad=None):
        """dL/dx into x.grad for every leaf x this tensor was computed from, L being this tensor.

        A tensor of more than one element has no single dL/d(itself): pass `grad`, an array of
        its shape (the gradient of some scalar w.r.t. it), as torch's backward(gradient) does.
        """
        if not self.requires_grad:
            raise MiniLLMError(f"backward() on a tensor {self.shape} that does not require a "
                               "gradient: none of the tensors it came from has requires_grad=True")
        if grad is None:
            if self.size != 1:
                raise ShapeError(f"backward() on a non-scalar tensor of shape {self.shape} needs "
                                 f"grad=, an array of shape {self.shape}; only a one-element "
                                 "tensor gets the implicit gradient 1")
            grad = np.ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else np.asarray(grad)
        if grad.shape != self.shape:
            raise ShapeError(f"backward(): grad has shape {grad.shape}, the tensor {self.shape}")
        if grad.dtype != self.dtype:
            raise DTypeError(f"backward(): grad is {grad.dtype} {grad.shape}, the tensor is "
                             f"{self.dtype} {self.shape}")

        pending = {id(self): grad}  # node -> dL/d(node), summed over the node's users so far
        for node in reversed(topological_order(self)):
            g = pending.pop(id(node), None)
            if g is None:  # a constant (requires_grad=False): nothing to pass on or keep
                continue
            if node._backward is None:  # a leaf: keep its gradient (a copy: g may be a view)
                node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            for parent, parent_grad in zip(node._parents, node._backward(g)):
                if parent.requires_grad:
                    key = id(parent)
                    pending[key] = parent_grad if key not in pending else pending[key] + parent_grad


def make(data, parents, backward, op):
    """The output of an operation on `parents` (Tensors): records the graph if any parent
    requires a gradient and no_grad() is not active. `backward(G)` returns dL/d(parent) for
    each parent, in order."""
    out = Tensor(data)
    if _recording and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents, out._backward, out.op = parents, backward, op
    return out


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    A (3,) bias added to a (4, 3) batch was used by all 4 rows, so its gradient is the sum of
    the 4 rows' gradients: sum over the dimensions broadcasting added in front, and over those
    where `shape` has a 1 that was stretched.
    """
    if grad.shape == shape:
        return grad
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def expand(g, axes, keepdims, shape):
    """The gradient of a reduction over `axes`, put back to the input's `shape`."""
    if not keepdims:
        g = np.expand_dims(g, axes)
    return np.broadcast_to(g, shape)


def is_basic_index(index):
    """True for integers, slices, None and ..., alone or in a tuple: indexing that selects
    each element at most once."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (numbers.Integral, slice)) or p is None or p is Ellipsis
               for p in parts)
