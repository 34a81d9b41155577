"""The kernels inside the model: a training step and greedy generation through the ops seam give
what the reference gives. On a CPU the Triton kernels run interpreted; the CUDA versions are
the GPU-marked tests at the end."""

import pytest
import torch

from mini_llm import ops
from mini_llm.generate import generate
from mini_llm.model import GPT, GPTConfig

FAMILIES = {"gpt2": dict(), "llama": dict(norm="rmsnorm", mlp="swiglu", pos="rope")}
TRAINING_OPS = "layer_norm={0},rms_norm={0},add_layer_norm={0},add_rms_norm={0},attention={0}"


def small_model(device="cpu", **kw):
    torch.manual_seed(0)
    # head size 64: every kernel takes it (CUDA decode attention takes 64 and 128 only)
    config = GPTConfig(vocab_size=37, block_size=32, n_layer=2, n_head=2, n_embd=128, bias=True, **kw)
    return GPT(config).to(device)


def loss_and_grads(model, kernels, x, y):
    model.zero_grad(set_to_none=True)
    with ops.use_kernels(kernels):
        _, loss = model(x, y)
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_step_matches(backend, device, family, tol):
    model = small_model(device, **FAMILIES[family])
    x = torch.randint(0, 37, (2, 29), device=device)  # 29: not a multiple of any block
    y = torch.randint(0, 37, (2, 29), device=device)
    loss_ref, grads_ref = loss_and_grads(model, "reference", x, y)
    loss, grads = loss_and_grads(model, TRAINING_OPS.format(backend), x, y)
    torch.testing.assert_close(loss, loss_ref, rtol=tol, atol=tol)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_ref[name], rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def assert_same_greedy_tokens(kernels, device, n_tokens=200):
    """`n_tokens` greedy tokens past the 32-position context: decode steps, then sliding-window
    prefills, all through the chosen kernels, token for token the reference's."""
    model = small_model(device).eval()
    prompt = torch.randint(0, 37, (2, 5), device=device)
    with ops.use_kernels("reference"):
        want = generate(model, prompt, n_tokens, temperature=0)
    with ops.use_kernels(kernels):
        got = generate(model, prompt, n_tokens, temperature=0)
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_with_triton_kernels_matches_reference(family):
    assert_step_matches("triton", "cpu", family, tol=1e-4)


def test_greedy_generation_with_the_triton_decode_kernel_matches_reference():
    assert_same_greedy_tokens("decode_attention=triton", "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_on_gpu_matches_reference(backend, family):
    assert_step_matches(backend, "cuda", family, tol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("kernels", ["triton", "cuda"])
def test_greedy_generation_on_gpu_matches_reference(kernels):
    assert_same_greedy_tokens(kernels, "cuda")
