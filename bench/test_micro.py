"""CPU micro-benchmarks with pytest-benchmark: the reference ops against PyTorch's, and one
training step. Never part of the normal test command (pytest only collects tests/).

    pytest bench/ --benchmark-only                                    # run and print
    pytest bench/ --benchmark-only $STORE --benchmark-compare=0001    # compare with the baseline
    pytest bench/ --benchmark-only $STORE --benchmark-compare=0001 --benchmark-compare-fail=median:10%
    pytest bench/ --benchmark-only $STORE --benchmark-save=NAME        # save a new baseline

with STORE="--benchmark-storage=file://bench/results/micro": 0001_cpu is the 2-core CPU
development machine's baseline (compare only with runs on the same kind of machine).

Each benchmark also asserts its result matches PyTorch's, so a fast wrong op cannot pass.
"""

import pytest
import torch

from mini_llm import ops
from mini_llm.profile import synthetic_training

BACKENDS = ["reference", "torch"]


def inputs(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm(benchmark, backend):
    benchmark.group = "layer_norm 4096x384"
    x, w, b = inputs(4096, 384), inputs(384), inputs(384)
    y = benchmark(ops.implementation("layer_norm", backend), x, w, b, 1e-5)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (384,), w, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_attention(benchmark, backend):
    benchmark.group = "attention B4 nh6 T256 hs64"
    q, k, v = inputs(4, 6, 256, 64), inputs(4, 6, 256, 64), inputs(4, 6, 256, 64)
    y = benchmark(ops.implementation("attention", backend), q, k, v, True, None)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy(benchmark, backend):
    benchmark.group = "cross_entropy 16384x65"
    logits, targets = inputs(16384, 65), torch.randint(0, 65, (16384,))
    loss = benchmark(ops.implementation("cross_entropy", backend), logits, targets, -1)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, targets))


@pytest.mark.parametrize("kernels", BACKENDS)
def test_training_step(benchmark, kernels):
    benchmark.group = "shakespeare-char-cpu training step"
    with ops.use_kernels(kernels):
        model, step, _ = synthetic_training("shakespeare-char-cpu", torch.device("cpu"))
        before = model.wte.weight.detach().clone()
        benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    assert not torch.equal(before, model.wte.weight)  # the steps did update the model
