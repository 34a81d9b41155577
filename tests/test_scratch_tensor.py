"""The tensor engine's core operations (arithmetic with broadcasting, matmul, reductions, shape
and indexing, elementwise functions): outputs and gradients against central finite differences
and torch.autograd in float64, over random shapes drawn by hypothesis; dtypes; bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mini_llm.errors import MiniLLMError
from mini_llm.scratch import DTypeError, ShapeError, Tensor, no_grad
from mini_llm.scratch.gradcheck import check_gradients, relative_error

FAST = settings(max_examples=20, deadline=None, derandomize=True)


def check(ours, theirs, *arrays, finite_differences=True):
    """ours (Tensors -> Tensor) and theirs (torch tensors -> tensor) on the same float64 inputs:
    the outputs agree, and our gradients agree with central finite differences (< 1e-6
    relative) and with torch.autograd (< 1e-10).

    finite_differences=False for saturated inputs (softmax of logits 50 apart): there the
    gradient is ~1e-20 of the value and a difference quotient cannot resolve it; torch can."""
    if finite_differences:
        assert max(check_gradients(ours, *arrays)) < 1e-6
    xs = [Tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, out_t = ours(*xs), theirs(*ts)
    assert out.shape == tuple(out_t.shape) and out.dtype == np.float64
    np.testing.assert_allclose(out.data, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    upstream = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(upstream)
    out_t.backward(torch.tensor(upstream))
    for x, t in zip(xs, ts):
        assert x.grad.shape == x.shape
        assert relative_error(x.grad, t.grad.numpy()) < 1e-10


def away_from_zero(rng, shape, margin=0.3):
    """Random values with |x| >= margin: safe to divide by, and far from relu's kink."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (margin + np.abs(x)) if np.ndim(x) else margin + abs(x)


BINARY = {
    "add": (lambda a, b: a + b),
    "sub": (lambda a, b: a - b),
    "mul": (lambda a, b: a * b),
    "div": (lambda a, b: a / b),
    "chain": (lambda a, b: (a * b - a) / (b * b) + 2.0 * a - 1.0 / b),  # scalars on both sides
}


@FAST
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
       name=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_elementwise_arithmetic_broadcasts(shapes, name, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shapes.input_shapes[0]), away_from_zero(rng, shapes.input_shapes[1])
    check(BINARY[name], BINARY[name], a, b)


@FAST
@given(shapes=hnp.mutually_broadcastable_shapes(signature="(m,k),(k,n)->(m,n)", max_dims=2,
                                                max_side=3),
       seed=st.integers(0, 2**16))
def test_batched_matmul_broadcasts_the_batch(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s) for s in shapes.input_shapes)
    check(lambda x, y: x @ y, lambda x, y: x @ y, a, b)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 4), (4, 5)), ((4, 5), (2, 5, 3)),
                                             ((2, 1, 3, 4), (3, 4, 2)), ((1, 1), (1, 1))])
def test_matmul_shapes_of_layers_and_heads(a_shape, b_shape):
    rng = np.random.default_rng(0)
    check(lambda x, y: x @ y, lambda x, y: x @ y, rng.standard_normal(a_shape),
          rng.standard_normal(b_shape))


@st.composite
def shape_and_axis(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    n = len(shape)
    axis = draw(st.none() | st.integers(-n, n - 1)
                | st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True).map(tuple))
    return shape, axis


def torch_dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


@FAST
@given(shape_axis=shape_and_axis(), keepdims=st.booleans(),
       name=st.sampled_from(["sum", "mean", "max"]), seed=st.integers(0, 2**16))
def test_reductions_over_any_axes(shape_axis, keepdims, name, seed):
    shape, axis = shape_axis
    x = np.random.default_rng(seed).standard_normal(shape)  # no ties: max has one winner
    torch_name = {"sum": "sum", "mean": "mean", "max": "amax"}[name]
    check(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims),
          lambda t: getattr(torch, torch_name)(t, dim=torch_dims(axis, t.ndim), keepdim=keepdims), x)


def test_max_splits_the_gradient_between_ties_as_torch_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]])
    t, tt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    t.max(axis=1).sum().backward()
    torch.amax(tt, dim=1).sum().backward()
    np.testing.assert_array_equal(t.grad, tt.grad.numpy())
    assert t.grad[0].tolist() == [0.0, 0.5, 0.5]


UNARY = {
    "exp": (lambda t: t.exp(), torch.exp),
    "log": (lambda t: (t * t).log(), lambda t: (t * t).log()),
    "tanh": (lambda t: t.tanh(), torch.tanh),
    "relu": (lambda t: t.relu(), torch.relu),
    "neg": (lambda t: -t, lambda t: -t),
    "pow": (lambda t: (t * t) ** 1.5 + t**3 + t**-1, lambda t: (t * t) ** 1.5 + t**3 + t**-1),
}


@FAST
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
       name=st.sampled_from(sorted(UNARY)), seed=st.integers(0, 2**16))
def test_elementwise_functions(shape, name, seed):
    ours, theirs = UNARY[name]
    check(ours, theirs, away_from_zero(np.random.default_rng(seed), shape))


INDEXING = [
    (1, 1),
    (np.s_[1:, ::2], np.s_[1:, ::2]),
    (np.s_[..., None, -1], np.s_[..., None, -1]),
    (np.array([2, 0, 2, 2]), torch.tensor([2, 0, 2, 2])),  # repeats: gradients add up
    (np.s_[np.array([0, 3, 0]), np.array([1, 1, 2])], np.s_[torch.tensor([0, 3, 0]), torch.tensor([1, 1, 2])]),
    (np.array([True, False, True, True]), torch.tensor([True, False, True, True])),
]


@pytest.mark.parametrize("index,torch_index", INDEXING)
def test_indexing_routes_gradients_to_the_picked_elements(index, torch_index):
    x = np.random.default_rng(0).standard_normal((4, 3))
    check(lambda t: t[index], lambda t: t[torch_index], x)


def test_reshape_and_transpose():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    check(lambda t: t.reshape(4, -1).T, lambda t: t.reshape(4, -1).T, x)
    check(lambda t: t.transpose(1, 2, 0).reshape(-1, 2), lambda t: t.permute(1, 2, 0).reshape(-1, 2), x)


def test_a_tensor_used_twice_gets_both_gradients():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 5.0])  # 2x + 1
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 7.0])  # leaves accumulate across calls


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal((4, 2)).astype(np.float32), requires_grad=True)
    out = ((a @ b).tanh() * 0.5 + 1.0).exp().log().relu() ** 2 / 3.0 - a.max(axis=1, keepdims=True)
    loss = out.mean()
    assert out.dtype == loss.dtype == np.float32
    loss.backward()
    assert a.grad.dtype == b.grad.dtype == np.float32


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2.0).sum()
    assert not y.requires_grad and y._parents == ()
    assert (x * 2.0).sum().requires_grad  # recording is back on after the block


# ---- bad input: a clear error that names the shapes ------------------------------------------

def test_matmul_shape_mismatch_names_both_shapes():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5)))
    with pytest.raises(ShapeError, match=r"\(2, 3\) @ \(4, 5\).*inner dimensions differ \(3 columns vs 4 rows\)"):
        a @ b
    with pytest.raises(ShapeError, match=r"batch dimensions \(2,\) and \(3,\)"):
        Tensor(np.ones((2, 3, 4))) @ Tensor(np.ones((3, 4, 5)))
    with pytest.raises(ShapeError, match=r"\(3,\) @ \(3, 2\): both operands need 2 or more"):
        Tensor(np.ones(3)) @ Tensor(np.ones((3, 2)))


def test_backward_on_a_non_scalar_needs_a_gradient():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ShapeError, match=r"non-scalar tensor of shape \(2, 3\) needs grad="):
        y.backward()
    with pytest.raises(ShapeError, match=r"grad has shape \(3, 2\), the tensor \(2, 3\)"):
        y.backward(np.ones((3, 2)))
    with pytest.raises(MiniLLMError, match="does not require a gradient"):
        Tensor(np.ones(1)).backward()


def test_dtype_mixing_is_refused():
    a32 = Tensor(np.ones((2, 3), dtype=np.float32))
    a64 = Tensor(np.ones((3,)))
    with pytest.raises(DTypeError, match=r"add: cannot mix float32 \(2, 3\) with float64 \(3,\)"):
        a32 + a64
    with pytest.raises(DTypeError, match=r"matmul: cannot mix float32 \(2, 3\) with float64"):
        a32 @ Tensor(np.ones((3, 1)))
    with pytest.raises(DTypeError, match=r"backward\(\): grad is float64 \(2, 3\), the tensor is float32"):
        (Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True) * 1.0).backward(np.ones((2, 3)))
    with pytest.raises(DTypeError, match=r"float32 or float64, got float16 \(shape \(2,\)\)"):
        Tensor(np.ones(2, dtype=np.float16))
    assert (a32 * 2).dtype == np.float32  # Python numbers take the tensor's dtype


def test_other_shape_errors_name_the_shapes():
    with pytest.raises(ShapeError, match=r"add: shapes \(2, 3\) and \(2,\) do not broadcast"):
        Tensor(np.ones((2, 3))) + Tensor(np.ones(2))
    with pytest.raises(ShapeError, match=r"cannot reshape \(2, 3\) \(6 elements\) to \(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)
    with pytest.raises(ShapeError, match=r"axis 2 is out of range for shape \(2, 3\)"):
        Tensor(np.ones((2, 3))).sum(axis=2)
    with pytest.raises(ShapeError, match=r"\(0, 0\) is not a permutation of the axes of \(2, 3\)"):
        Tensor(np.ones((2, 3))).transpose(0, 0)
    assert issubclass(ShapeError, MiniLLMError) and issubclass(ShapeError, ValueError)
