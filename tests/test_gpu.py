"""The model on a CUDA GPU: bf16 autocast training learns, and the backends agree on device.
Run with `pytest -m gpu`; without a GPU these skip."""

import pytest
import torch

from mini_llm import ops
from mini_llm.generate import generate
from mini_llm.model import GPT, GPTConfig
from mini_llm.optim import AdamW

pytestmark = pytest.mark.gpu


def cuda_model(**kw):
    config = GPTConfig(vocab_size=67, block_size=64, n_layer=2, n_head=4, n_embd=128, **kw)
    return GPT(config).cuda()


def test_bf16_autocast_training_overfits_a_batch():
    model = cuda_model()
    x, y = torch.randint(0, 67, (8, 64), device="cuda"), torch.randint(0, 67, (8, 64), device="cuda")
    opt = AdamW(model.param_groups(0.0), lr=3e-3)
    losses = []
    for _ in range(150):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("family", [dict(), dict(norm="rmsnorm", mlp="swiglu", pos="rope")])
def test_backends_agree_in_bf16(family):
    model = cuda_model(**family).eval()
    idx = torch.randint(0, 67, (4, 64), device="cuda")
    with torch.no_grad():
        with ops.use_kernels("reference"):
            expected, _ = model.double()(idx)
        model.float()
        for backend in ("reference", "torch"):
            with ops.use_kernels(backend), torch.autocast("cuda", dtype=torch.bfloat16):
                logits, _ = model(idx)
            err = (logits.double() - expected).norm() / expected.norm()
            assert err < 2e-2, (backend, err.item())


def test_cached_generation_matches_recomputation_on_cuda():
    model = cuda_model().eval()
    prompt = torch.randint(0, 67, (3, 5), device="cuda")
    out = generate(model, prompt, 20, temperature=0)
    for t in range(5, 25):
        logits, _ = model(out[:, :t])
        assert torch.equal(out[:, t], logits[:, -1].argmax(-1))
