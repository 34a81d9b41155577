"""Modules (Linear, Embedding, LayerNorm, MLP) against their torch.nn twins with the same
weights, and the optimizers (SGD with momentum, AdamW) against torch.optim, step by step."""

import numpy as np
import pytest
import torch

from mini_llm.scratch import ShapeError, Tensor
from mini_llm.scratch import nn
from mini_llm.scratch.optim import SGD, AdamW


def torch_twin_agrees(ours, theirs, make_input):
    """Copy theirs' weights into ours; outputs and every parameter gradient agree (float64)."""
    ours.load_state({k: v.detach().numpy() for k, v in theirs.named_parameters()})
    x_ours, x_theirs = make_input()
    out, out_t = ours(x_ours), theirs(x_theirs)
    np.testing.assert_allclose(out.data, out_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    upstream = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(upstream)
    out_t.backward(torch.tensor(upstream))
    grads = {name: p.grad for name, p in ours.named_parameters()}
    assert grads.keys() == dict(theirs.named_parameters()).keys()
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-12)


def float_input(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    return lambda: (Tensor(x), torch.tensor(x))


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    torch_twin_agrees(nn.Linear(5, 3, bias, dtype=np.float64),
                      torch.nn.Linear(5, 3, bias, dtype=torch.float64), float_input((2, 4, 5)))


def test_embedding():
    ids = np.array([[0, 3, 3], [6, 0, 1]])
    torch_twin_agrees(nn.Embedding(7, 4, dtype=np.float64),
                      torch.nn.Embedding(7, 4, dtype=torch.float64),
                      lambda: (ids, torch.tensor(ids)))


def test_layer_norm():
    theirs = torch.nn.LayerNorm(6, dtype=torch.float64)
    with torch.no_grad():  # not the ones / zeros they start at, so the test can fail
        theirs.weight.normal_()
        theirs.bias.normal_()
    torch_twin_agrees(nn.LayerNorm(6, dtype=np.float64), theirs, float_input((3, 6)))


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = torch.nn.Linear(4, 8, dtype=torch.float64)
        self.c_proj = torch.nn.Linear(8, 3, dtype=torch.float64)

    def forward(self, x):
        return self.c_proj(torch.nn.functional.gelu(self.c_fc(x)))


def test_mlp_and_parameter_names():
    ours = nn.MLP(4, 8, 3, "gelu", dtype=np.float64)
    assert [n for n, _ in ours.named_parameters()] == [
        "c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"]
    assert ours.num_params() == 4 * 8 + 8 + 8 * 3 + 3
    torch_twin_agrees(ours, TorchMLP(), float_input((5, 4)))


def test_train_and_eval_reach_every_submodule():
    mlp = nn.MLP(2, 3, 1)
    assert mlp.eval().c_fc.training is False
    assert mlp.train().c_proj.training is True


def test_load_state_refuses_wrong_names_and_shapes():
    layer = nn.Linear(2, 3)
    with pytest.raises(KeyError, match=r"missing \['bias'\]"):
        layer.load_state({"weight": np.zeros((3, 2))})
    with pytest.raises(ShapeError, match=r"weight: got shape \(2, 3\), the parameter is \(3, 2\)"):
        layer.load_state({"weight": np.zeros((2, 3)), "bias": np.zeros(3)})


def run_both(make_ours, make_theirs, steps=12):
    """The same random gradients fed to our optimizer and torch's; the parameters (a matrix,
    which decays, and a vector, which does not) must end equal."""
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((4, 3)), rng.standard_normal(3)]
    ours = [Tensor(a.copy(), requires_grad=True) for a in start]
    theirs = [torch.tensor(a, requires_grad=True) for a in start]
    opt, opt_t = make_ours(ours), make_theirs(theirs)
    for step in range(steps):
        lr = 0.05 * (1 - step / (2 * steps))  # a schedule: lr changes between steps
        opt.lr = lr
        for group in opt_t.param_groups:
            group["lr"] = lr
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(p.shape)
            p.grad, t.grad = g, torch.tensor(g)
        opt.step()
        opt_t.step()
    for p, t, s in zip(ours, theirs, start):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
        assert not np.allclose(p.data, s)  # the steps did move them


def decay_matrices_only(params, weight_decay):
    return [{"params": [params[0]], "weight_decay": weight_decay},
            {"params": [params[1]], "weight_decay": 0.0}]


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
def test_sgd_matches_torch(momentum, weight_decay):
    run_both(lambda ps: SGD(ps, lr=0.05, momentum=momentum, weight_decay=weight_decay),
             lambda ps: torch.optim.SGD(decay_matrices_only(ps, weight_decay), lr=0.05,
                                        momentum=momentum))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch(weight_decay):
    run_both(lambda ps: AdamW(ps, lr=0.05, betas=(0.9, 0.99), weight_decay=weight_decay),
             lambda ps: torch.optim.AdamW(decay_matrices_only(ps, weight_decay), lr=0.05,
                                          betas=(0.9, 0.99), eps=1e-8))


def test_optimizers_skip_parameters_without_a_gradient():
    p = Tensor(np.ones(3), requires_grad=True)
    opt = AdamW([p], lr=0.1)
    opt.step()
    np.testing.assert_array_equal(p.data, np.ones(3))
