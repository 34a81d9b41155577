"""Check a gradient the slow, sure way: central finite differences.

    df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2 h)

The error of this estimate shrinks like h^2 (the odd terms of the Taylor series cancel), and
rounding adds about eps / h; in float64 with h = 1e-6 both are far below 1e-6 relative, so
an analytic gradient that disagrees by more than that is wrong. Use it on any function you add:

    errors = check_gradients(lambda x, w: (x @ w).tanh(), np.random.randn(3, 4), np.random.randn(4, 2))
    assert max(errors) < 1e-6
"""

import numpy as np

from .tensor import Tensor, no_grad


def numerical_gradients(f, arrays, h=1e-6):
    """d f(*arrays) / d arrays[j] for each j, f returning a float; each element nudged by +-h
    in turn (so: two calls of f per element, keep the arrays small)."""
    grads = []
    for x in arrays:
        grad = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            original = x[i]
            x[i] = original + h
            above = f(*arrays)
            x[i] = original - h
            below = f(*arrays)
            x[i] = original
            grad[i] = (above - below) / (2 * h)
        grads.append(grad)
    return grads


def relative_error(a, b):
    """||a - b|| / max(||a||, ||b||), and 0 when both are 0."""
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def check_gradients(fn, *arrays, seed=0, h=1e-6):
    """Relative error between the engine's gradient and central differences, per input.

    fn maps Tensors to a Tensor of any shape; the scalar differentiated is sum(fn(...) * R),
    R a fixed random array, so every output element counts, each with its own weight.
    """
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    inputs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*inputs)
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()

    def weighted_sum(*xs):
        with no_grad():
            return float((fn(*[Tensor(x) for x in xs]).data * weights).sum())

    numerical = numerical_gradients(weighted_sum, arrays, h)
    return [relative_error(t.grad, n) for t, n in zip(inputs, numerical)]
