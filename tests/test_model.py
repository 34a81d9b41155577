"""The reference transformer: config checks, causality, learning, the KV cache, and that every
backend of the seam computes the same model."""

import pytest
import torch

from mini_llm import ops
from mini_llm.errors import ConfigError
from mini_llm.generate import generate
from mini_llm.model import GPT, GPTConfig
from mini_llm.presets import PRESETS

GPT2 = dict(norm="layernorm", mlp="gelu", pos="learned", bias=True, tie_weights=True)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_weights=False)
FAMILIES = pytest.mark.parametrize("family", [GPT2, LLAMA], ids=["gpt2", "llama"])


def tiny(family, **kw):
    return GPT(GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=16, **{**family, **kw}))


@pytest.mark.parametrize("bad,message", [
    (dict(n_embd=100, n_head=3), r"n_embd \(100\) must be divisible by n_head \(3\)"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(dropout=1.5), "dropout must be in"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(pos="rope", n_embd=30, n_head=2), "rope needs an even head size"),
    (dict(mlp_hidden=0), "mlp_hidden must be a positive integer"),
    (dict(norm_eps=-1.0), "norm_eps must be > 0"),
    (dict(pos="rope", rope_base=0.0), "rope_base must be > 0"),
    (dict(norm_eps=float("nan")), "norm_eps must be > 0"),
])
def test_bad_configs_are_clear_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig(**bad)


def test_shakespeare_char_is_nanogpts_baby_gpt():
    model = GPT(GPTConfig(vocab_size=65, **PRESETS["shakespeare-char"]["model"]))
    assert round(model.num_params() / 1e6, 2) == 10.65  # nanoGPT prints "10.65M"
    assert 10.6e6 < model.num_params(non_embedding=False) < 10.8e6


@FAMILIES
def test_mlp_hidden_sets_the_mlps_width(family):
    C, H, V, L = 16, 40, 23, 2
    default, wide = tiny(family), tiny(family, mlp_hidden=H)
    assert default.config.hidden_width() == (4 * C if family["mlp"] == "gelu" else 64)  # 64 * ceil(8*16/3/64)
    matrices = 2 if family["mlp"] == "gelu" else 3  # SwiGLU: gate, up and down
    biases = (H + C) if family["bias"] else 0
    mlp_params = sum(p.numel() for p in wide.h[0].mlp.parameters())
    assert mlp_params == matrices * C * H + biases
    assert wide.num_params() - default.num_params() == L * (mlp_params - sum(
        p.numel() for p in default.h[0].mlp.parameters()))
    x, y = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    _, loss = wide(x, y)
    loss.backward()  # a training step runs through the new width
    assert wide.h[0].mlp.c_proj.weight.grad.shape == (C, H)
    assert torch.isfinite(loss)


@FAMILIES
def test_future_tokens_never_change_past_logits(family):
    model = tiny(family).eval()
    idx = torch.randint(0, 23, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = torch.randint(0, 23, (2, 5))
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])  # the check can fail: later logits do change


@FAMILIES
def test_overfits_one_batch(family):
    model = tiny(family)
    x, y = torch.randint(0, 23, (4, 12)), torch.randint(0, 23, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, first = model(x, y)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first.item() > 2.5 and loss.item() < 0.1


@FAMILIES
def test_kv_cache_logits_equal_full_recomputation(family):
    model = tiny(family).double().eval()
    idx = torch.randint(0, 23, (3, 12))
    full, _ = model(idx)
    cache = model.new_cache(3)
    prefill, _ = model(idx[:, :5], cache=cache, start=0)
    steps = [model(idx[:, t : t + 1], cache=cache, start=t)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, rtol=1e-10, atol=1e-10)


@FAMILIES
def test_backends_compute_the_same_model(family):
    model = tiny(family, dropout=0.0).double()
    idx, targets = torch.randint(0, 23, (2, 12)), torch.randint(0, 23, (2, 12))
    results = {}
    for backend in ("reference", "torch"):
        model.zero_grad()
        with ops.use_kernels(backend):
            logits, loss = model(idx, targets)
        loss.backward()
        results[backend] = (logits, [p.grad.clone() for p in model.parameters()])
    (la, ga), (lb, gb) = results["reference"], results["torch"]
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-10)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_kv_cache_takes_the_dtype_of_its_keys():
    model = tiny(LLAMA).eval()
    cache = model.new_cache(2)
    with torch.autocast("cpu", dtype=torch.bfloat16), ops.use_kernels("reference"):
        logits, _ = model(torch.randint(0, 23, (2, 5)), cache=cache, start=0)
        step, _ = model(torch.randint(0, 23, (2, 1)), cache=cache, start=5)
    assert cache.k.dtype == torch.bfloat16 and torch.isfinite(step).all()
    with pytest.raises(ValueError, match="do not fit a cache of 12"):
        cache.update(0, 11, cache.k[0, :, :, :2], cache.v[0, :, :, :2])


def test_greedy_generation_is_deterministic_and_slides_past_the_context():
    model = tiny(GPT2).eval()
    prompt = torch.randint(0, 23, (2, 20))  # longer than the 12-token context: its end is kept
    a = generate(model, prompt, 30, temperature=0)
    b = generate(model, prompt, 30, temperature=0)
    assert a.shape == (2, 50) and torch.equal(a, b) and torch.equal(a[:, :20], prompt)
    # Until the window slides, each greedy token is the argmax of a full recomputation.
    out = generate(model, prompt[:, :4], 8, temperature=0)
    for t in range(4, 12):
        logits, _ = model(out[:, :t])
        assert torch.equal(out[:, t], logits[:, -1].argmax(-1))


def test_top_k_one_is_greedy():
    model = tiny(LLAMA).eval()
    prompt = torch.randint(0, 23, (1, 3))
    sampled = generate(model, prompt, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, generate(model, prompt, 10, temperature=0))


@pytest.mark.parametrize("kw,message", [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(max_new_tokens=-3), "number of new tokens"),
])
def test_bad_generation_settings(kw, message):
    args = {"max_new_tokens": 5, **kw}
    with pytest.raises(ConfigError, match=message):
        generate(tiny(GPT2), torch.zeros(1, 3, dtype=torch.long), **args)


def test_sampling_from_broken_weights_is_a_clear_error():
    """A checkpoint of a diverged run (NaN weights) ends in one error, not in torch.multinomial."""
    from mini_llm.errors import DivergedError

    model = tiny(GPT2).eval()
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight.fill_(float("nan"))
    with pytest.raises(DivergedError, match="logits are not finite"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 5)
