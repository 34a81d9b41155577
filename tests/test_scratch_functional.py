"""functional.py (softmax, log-softmax, cross-entropy, layer norm, GELU, dropout, embedding):
outputs and hand-written gradients against central finite differences and torch.autograd, in
float64 over random shapes; numerical stability; bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mini_llm.scratch import DTypeError, ShapeError, Tensor
from mini_llm.scratch import functional as F
from mini_llm.scratch.gradcheck import check_gradients

from test_scratch_tensor import FAST, check

ROWS = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


@FAST
@given(shape=ROWS, axis_pick=st.integers(0, 2), scale=st.sampled_from([1.0, 30.0]),
       seed=st.integers(0, 2**16))
def test_softmax_and_log_softmax(shape, axis_pick, scale, seed):
    axis = -1 - axis_pick % len(shape)
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    check(lambda t: F.softmax(t, axis), lambda t: torch.softmax(t, axis), x,
          finite_differences=scale == 1.0)
    check(lambda t: F.log_softmax(t, axis), lambda t: torch.log_softmax(t, axis), x,
          finite_differences=scale == 1.0)


def test_softmax_is_finite_for_huge_logits():
    x = Tensor(np.array([[1000.0, -1000.0, 0.0], [800.0, 800.0, -5.0]]))
    np.testing.assert_allclose(F.softmax(x).data, [[1, 0, 0], [0.5, 0.5, 0]], atol=1e-12)
    log_p = F.log_softmax(x).data
    assert np.isfinite(log_p).all() and log_p[0, 1] == pytest.approx(-2000.0)


@FAST
@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), vocab=st.integers(2, 7),
       scale=st.sampled_from([1.0, 50.0]), seed=st.integers(0, 2**16))
def test_cross_entropy(lead, vocab, scale, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(lead + (vocab,)) * scale
    targets = rng.integers(0, vocab, lead)
    check(lambda t: F.cross_entropy(t, targets),
          lambda t: TF.cross_entropy(t.reshape(-1, vocab), torch.tensor(targets).reshape(-1)),
          logits, finite_differences=scale == 1.0)


def test_cross_entropy_equals_its_composition():
    """The fused op is -mean(log_softmax(logits)[row, target]): same value, same gradient."""
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    composed = lambda t: -F.log_softmax(t)[np.arange(6), targets].mean()  # noqa: E731
    fused, slow = Tensor(logits, requires_grad=True), Tensor(logits, requires_grad=True)
    F.cross_entropy(fused, targets).backward()
    composed(slow).backward()
    assert F.cross_entropy(Tensor(logits), targets).item() == pytest.approx(composed(Tensor(logits)).item())
    np.testing.assert_allclose(fused.grad, slow.grad, rtol=1e-12, atol=1e-15)


@FAST
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=3, max_side=5),
       with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_norm(shape, with_bias, seed):
    # At least 3 channels: 2 normalise to (-1, 1) whatever x is, so x's gradient is only eps's.
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x, w, b = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(C), rng.standard_normal(C)
    if with_bias:
        check(lambda x, w, b: F.layer_norm(x, w, b), lambda x, w, b: TF.layer_norm(x, (C,), w, b),
              x, w, b)
    else:
        check(lambda x, w: F.layer_norm(x, w), lambda x, w: TF.layer_norm(x, (C,), w), x, w)


@FAST
@given(shape=ROWS, scale=st.sampled_from([1.0, 4.0]), seed=st.integers(0, 2**16))
def test_gelu_is_the_exact_erf_form(shape, scale, seed):
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    check(F.gelu, TF.gelu, x, finite_differences=scale == 1.0)  # gelu'(-9) ~ 1e-18: see check


@FAST
@given(vocab=st.integers(1, 6), ids_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5),
       seed=st.integers(0, 2**16))
def test_embedding_scatter_adds_repeated_rows(vocab, ids_shape, seed):
    rng = np.random.default_rng(seed)
    weight, ids = rng.standard_normal((vocab, 3)), rng.integers(0, vocab, ids_shape)
    check(lambda w: F.embedding(w, ids), lambda w: TF.embedding(torch.tensor(ids), w), weight)


def test_embedding_backward_equals_np_add_at_in_float32():
    rng = np.random.default_rng(0)
    weight = Tensor(rng.standard_normal((7, 4)).astype(np.float32), requires_grad=True)
    ids = rng.integers(0, 7, (5, 9)).astype(np.uint16)  # uint16, as the data loader stores them
    upstream = rng.standard_normal((5, 9, 4)).astype(np.float32)
    F.embedding(weight, ids).backward(upstream)
    expected = np.zeros((7, 4), np.float32)
    np.add.at(expected, ids, upstream)
    assert weight.grad.dtype == np.float32
    np.testing.assert_allclose(weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_dropout_keeps_the_expectation_and_routes_gradients_through_the_mask():
    x = np.random.default_rng(0).standard_normal((40, 50))
    out = F.dropout(Tensor(x), 0.3, np.random.default_rng(1)).data
    dropped = out == 0
    assert 0.25 < dropped.mean() < 0.35
    np.testing.assert_allclose(out[~dropped], x[~dropped] / 0.7)
    # The same generator state gives the same mask, so finite differences see a fixed function.
    assert max(check_gradients(lambda t: F.dropout(t, 0.5, np.random.default_rng(2)), x[:4, :5])) < 1e-6
    t = Tensor(x)
    assert F.dropout(t, 0.3, np.random.default_rng(1), training=False) is t
    assert F.dropout(t, 0.0, np.random.default_rng(1)) is t
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1.0"):
        F.dropout(t, 1.0, np.random.default_rng(1))


def test_bad_input_names_the_shapes():
    logits = Tensor(np.zeros((4, 5)))
    with pytest.raises(ShapeError, match=r"logits \(4, 5\) need targets of shape \(4,\), got \(5,\)"):
        F.cross_entropy(logits, np.zeros(5, dtype=int))
    with pytest.raises(ShapeError, match=r"targets \(shape \(4,\)\) must lie in \[0, 5\), got values from 0 to 5"):
        F.cross_entropy(logits, np.array([0, 1, 2, 5]))
    with pytest.raises(DTypeError, match=r"targets must be integers, got float64 \(shape \(4,\)\)"):
        F.cross_entropy(logits, np.zeros(4))
    with pytest.raises(ShapeError, match=r"ids \(shape \(2,\)\) must lie in \[0, 4\), got values from -1 to 3"):
        F.embedding(Tensor(np.zeros((4, 3))), np.array([-1, 3]))
    with pytest.raises(ShapeError, match=r"layer_norm: x \(2, 6\) needs a weight of shape \(6,\), got \(5,\)"):
        F.layer_norm(Tensor(np.zeros((2, 6))), Tensor(np.ones(5)))
