"""The bridge: the NumPy transformer block against the PyTorch reference block (model.Block),
same weights and inputs, float64: the output and every parameter gradient to 1e-6 relative."""

import numpy as np
import pytest
import torch

from mini_llm.errors import ConfigError
from mini_llm.model import Block as TorchBlock
from mini_llm.model import GPTConfig
from mini_llm.scratch import Tensor
from mini_llm.scratch.block import Block
from mini_llm.scratch.gradcheck import check_gradients, relative_error


def gpt2_config(bias=True):
    return GPTConfig(n_embd=24, n_head=3, block_size=16, dropout=0.0, bias=bias,
                     norm="layernorm", mlp="gelu", pos="learned")


def twin_blocks(config):
    """A PyTorch block with random weights (norm gains and biases included, not their 1s and
    0s) and a NumPy block holding a copy of them."""
    torch.manual_seed(0)
    theirs = TorchBlock(config, layer=0).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.3)
    ours = Block(config)
    ours.load_state({name: p.detach().numpy() for name, p in theirs.named_parameters()})
    return ours, theirs


@pytest.mark.parametrize("bias", [True, False])
def test_block_output_and_every_gradient_match_pytorch(bias):
    ours, theirs = twin_blocks(gpt2_config(bias))
    rng = np.random.default_rng(0)
    x, upstream = rng.standard_normal((2, 7, 24)), rng.standard_normal((2, 7, 24))

    x_ours, x_theirs = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, out_t = ours(x_ours), theirs(x_theirs)
    out.backward(upstream)
    out_t.backward(torch.tensor(upstream))

    assert relative_error(out.data, out_t.detach().numpy()) < 1e-6
    assert relative_error(x_ours.grad, x_theirs.grad.numpy()) < 1e-6
    grads = dict(ours.named_parameters())
    names = [name for name, _ in theirs.named_parameters()]
    assert sorted(grads) == sorted(names) and len(names) == (12 if bias else 6)
    for name, p in theirs.named_parameters():
        assert relative_error(grads[name].grad, p.grad.numpy()) < 1e-6, name


def test_block_input_gradient_matches_finite_differences():
    ours, _ = twin_blocks(GPTConfig(n_embd=8, n_head=2, block_size=4, dropout=0.0, bias=True))
    x = np.random.default_rng(1).standard_normal((1, 3, 8))
    assert max(check_gradients(ours, x)) < 1e-6


def test_block_is_causal():
    ours, _ = twin_blocks(gpt2_config())
    x = np.random.default_rng(2).standard_normal((1, 6, 24))
    changed = x.copy()
    changed[0, 4:] += 1.0  # change the last two positions only
    before, after = ours(Tensor(x)).data, ours(Tensor(changed)).data
    np.testing.assert_array_equal(before[0, :4], after[0, :4])
    assert not np.allclose(before[0, 4:], after[0, 4:])


@pytest.mark.parametrize("change", [dict(norm="rmsnorm"), dict(mlp="swiglu"), dict(pos="rope"),
                                    dict(dropout=0.1)])
def test_other_block_families_are_refused(change):
    config = GPTConfig(n_embd=24, n_head=3, **change)
    with pytest.raises(ConfigError, match="scratch block"):
        Block(config)
