"""Neural-network functions on Tensors: softmax, cross-entropy, layer norm, GELU, dropout and
the embedding lookup.

Some are compositions of tensor.py's operations, so their backward comes for free (dropout).
The others have a backward written by hand, derived once on paper: it is faster than the
chain of small steps autograd would record, and it is numerically safer (softmax never
forms exp(x) of a large x). docs/stage-f-scratch.md derives each one; tests/test_scratch_tensor.py
checks each against finite differences and torch.autograd.

Shapes: N rows (any leading dimensions), C channels / classes along the last axis, V vocabulary.
"""

import math

import numpy as np

from .tensor import DTypeError, ShapeError, Tensor, make, unbroadcast


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`.

    Backward: with s = softmax(x), ds_i/dx_j = s_i (delta_ij - s_j), so
    dL/dx = s * (G - sum(G * s)), one row at a time.
    """
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))  # the same ratio, no overflow
    s = e / e.sum(axis=axis, keepdims=True)
    return make(s, (x,), lambda g: (s * (g - (g * s).sum(axis=axis, keepdims=True)),), "softmax")


def log_softmax(x, axis=-1):
    """x - log(sum(exp(x))) along `axis`, without ever computing exp of a large number.

    Backward: d(log s_i)/dx_j = delta_ij - s_j, so dL/dx = G - s * sum(G).
    """
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - np.exp(out) * g.sum(axis=axis, keepdims=True),)

    return make(out, (x,), backward, "log_softmax")


def cross_entropy(logits, targets):
    """Mean over positions of -log softmax(logits)[target]: the loss of a classifier.

    logits (..., V), targets (...) integers in [0, V). Backward, for one row:
    dL/dlogits = (softmax(logits) - onehot(target)) / N: push the right class's probability up
    and every other class's down, in proportion to how much it took.
    """
    targets = np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ShapeError(f"cross_entropy: logits {logits.shape} need targets of shape "
                         f"{logits.shape[:-1]}, got {targets.shape}")
    check_ids(targets, logits.shape[-1], "cross_entropy: targets")
    V = logits.shape[-1]
    flat = logits.data.reshape(-1, V)  # (N, V)
    rows, picked = np.arange(len(flat)), targets.reshape(-1)
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1))  # (N,)
    loss = (log_sum - shifted[rows, picked]).mean()

    def backward(g):  # g: () the upstream gradient of the mean
        grad = np.exp(shifted - log_sum[:, None])  # softmax, (N, V)
        grad[rows, picked] -= 1.0
        return ((grad * (g / len(flat))).reshape(logits.shape),)

    return make(np.asarray(loss, dtype=logits.dtype), (logits,), backward, "cross_entropy")


def layer_norm(x, weight, bias=None, eps=1e-5):
    """Normalise each row of x (..., C) to mean 0 and variance 1, then scale and shift.

    xhat = (x - mean) / sqrt(var + eps),  y = xhat * weight + bias.
    Backward (r = 1 / sqrt(var + eps), D = G * weight, means over the row's C channels):
      dL/dweight = sum over rows of G * xhat,   dL/dbias = sum over rows of G,
      dL/dx = r * (D - mean(D) - xhat * mean(D * xhat)).
    The two means are what the row statistics contribute: every x in the row moved its mean
    and its variance, and through them every output of the row.
    """
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ShapeError(f"layer_norm: x {x.shape} needs a {name} of shape ({C},), "
                             f"got {p.shape}")
    mean = x.data.mean(axis=-1, keepdims=True)
    centred = x.data - mean
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = centred * rstd
    out = xhat * weight.data + (0.0 if bias is None else bias.data)

    def backward(g):
        d = g * weight.data
        grad_x = rstd * (d - d.mean(axis=-1, keepdims=True)
                         - xhat * (d * xhat).mean(axis=-1, keepdims=True))
        grads = (grad_x, unbroadcast(g * xhat, weight.shape))
        return grads if bias is None else grads + (unbroadcast(g, bias.shape),)

    parents = (x, weight) if bias is None else (x, weight, bias)
    return make(out.astype(x.dtype, copy=False), parents, backward, "layer_norm")


# NumPy has no erf; math.erf is exact to double precision, one element at a time. Slow-ish
# (only the transformer block uses GELU; the character MLP uses tanh), but exactly PyTorch's.
_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    """The exact GELU, x * Phi(x) with Phi the standard normal CDF (PyTorch's default).

    d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
    """
    cdf = (0.5 * (1.0 + _erf(x.data / math.sqrt(2.0)))).astype(x.dtype)
    pdf = (np.exp(-0.5 * x.data * x.data) / math.sqrt(2.0 * math.pi)).astype(x.dtype)
    return make(x.data * cdf, (x,), lambda g: (g * (cdf + x.data * pdf),), "gelu")


def dropout(x, p, rng, training=True):
    """Zero each element with probability p and scale the rest by 1 / (1 - p), so the expected
    value is unchanged. A composition (x times a constant mask): its backward is mul's."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    keep = rng.random(x.shape) >= p
    return x * Tensor(keep.astype(x.dtype) / x.dtype.type(1.0 - p))


def embedding(weight, ids):
    """Rows of weight (V, C) picked by integer ids (...): (..., C).

    Backward is a scatter-add: a row used k times gets the sum of its k gradients. np.add.at
    does that directly, but slowly; np.bincount over (row, channel) pairs computes the same
    sums several times faster (bench/scratch_step_vs_torch.py measures both).
    """
    ids = np.asarray(ids)
    if weight.ndim != 2:
        raise ShapeError(f"embedding: weight must be (vocabulary, channels), got {weight.shape}")
    V, C = weight.shape
    check_ids(ids, V, "embedding: ids")

    def backward(g):  # g: (..., C)
        rows = ids.reshape(-1, 1).astype(np.intp)  # uint16 ids would overflow below
        cells = (rows * C + np.arange(C)).ravel()  # the flat index of each (row, channel)
        sums = np.bincount(cells, weights=g.reshape(-1), minlength=V * C)  # float64 sums
        return (sums.reshape(V, C).astype(weight.dtype, copy=False),)

    return make(weight.data[ids], (weight,), backward, "embedding")


def check_ids(ids, n, what):
    """ids must be integers in [0, n): a float or an id out of range is a bug worth a message."""
    if ids.dtype.kind not in "iu":
        raise DTypeError(f"{what} must be integers, got {ids.dtype} (shape {ids.shape})")
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ShapeError(f"{what} (shape {ids.shape}) must lie in [0, {n}), "
                         f"got values from {ids.min()} to {ids.max()}")
