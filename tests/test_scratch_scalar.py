"""The scalar autograd engine: every operation's gradient against central finite differences
and torch.autograd, and the scalar MLP learning a small classification set."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mini_llm.scratch.scalar import Value
from mini_llm.scratch.scalar_nn import MLP, make_moons, train_classifier

# One expression per operation, written once for Values and once for torch (same methods).
EXPRESSIONS = {
    "add": lambda a, b: a + b + 2.0,
    "mul": lambda a, b: a * b * 3.0,
    "pow": lambda a, b: a**3 + b**-2 + a**0.5,
    "exp": lambda a, b: (a * 0.5).exp() * b,
    "log": lambda a, b: a.log() + (a * b * b).log(),
    "tanh": lambda a, b: (a - b).tanh(),
    "relu": lambda a, b: (a - 1.0).relu() + (b * -1.0).relu(),
    "sub_div": lambda a, b: (1.0 - a) / b - a / 2.0,
    "reuse": lambda a, b: a * a + a * b,  # a feeds three products: its gradient adds them
}


def central_difference(f, a, b, h=1e-6):
    return ((f(Value(a + h), Value(b)).data - f(Value(a - h), Value(b)).data) / (2 * h),
            (f(Value(a), Value(b + h)).data - f(Value(a), Value(b - h)).data) / (2 * h))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(EXPRESSIONS)),
       a=st.floats(0.2, 3.0), b=st.floats(0.2, 3.0), b_negative=st.booleans())
def test_gradient_matches_finite_differences_and_torch(name, a, b, b_negative):
    f = EXPRESSIONS[name]
    b = -b if b_negative and name not in ("log", "pow") else b  # log and b**-2 need b > 0 here
    assume(name != "relu" or min(abs(a - 1.0), abs(b)) > 1e-3)  # away from relu's kink
    x, y = Value(a), Value(b)
    out = f(x, y)
    out.backward()
    xt, yt = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (a, b))
    out_t = f(xt, yt)
    out_t.backward()
    assert out.data == pytest.approx(out_t.item(), rel=1e-12, abs=1e-12)
    for ours, numerical, theirs in zip((x.grad, y.grad), central_difference(f, a, b),
                                       (xt.grad.item(), yt.grad.item())):
        assert ours == pytest.approx(numerical, rel=1e-6, abs=1e-8)
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


def test_leaves_accumulate_across_backward_calls():
    a = Value(3.0)
    (a * 2.0).backward()
    (a * 5.0).backward()
    assert a.grad == 7.0  # added, not replaced: the reason zero_grad exists


def test_a_long_chain_does_not_hit_the_recursion_limit():
    x = Value(0.5)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    assert x.grad == pytest.approx(1.0001**5000, rel=1e-9)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="log of a non-positive number"):
        Value(-1.0).log()
    with pytest.raises(TypeError, match="exponent must be a number"):
        Value(2.0) ** Value(3.0)


def test_neuron_gradient_is_the_chain_rule_by_hand():
    # out = tanh(w x + b): dout/dw = (1 - out^2) x, dout/db = 1 - out^2
    w, x, b = Value(0.7), Value(-1.5), Value(0.2)
    out = (w * x + b).tanh()
    out.backward()
    local = 1 - math.tanh(0.7 * -1.5 + 0.2) ** 2
    assert (w.grad, x.grad, b.grad) == pytest.approx((local * -1.5, local * 0.7, local))


def test_mlp_learns_two_moons():
    X, y = make_moons(40, noise=0.1, seed=3)
    model = MLP([2, 8, 8, 1], seed=3)
    history = train_classifier(model, X, y, steps=25)
    first_loss, first_accuracy = history[0]
    last_loss, last_accuracy = history[-1]
    assert last_loss < 0.5 * first_loss
    assert last_accuracy >= 0.9 > first_accuracy
    assert len(model.parameters()) == (2 * 8 + 8) + (8 * 8 + 8) + (8 + 1)


def test_moons_are_seeded_and_balanced():
    X, y = make_moons(200, seed=0)
    X2, _ = make_moons(200, seed=0)
    np.testing.assert_array_equal(X, X2)
    assert X.shape == (200, 2) and set(np.unique(y)) == {-1, 1}
    assert 60 < (y == 1).sum() < 140
