"""`mini-llm costs` (mini_llm/scaling/costs.py): parameter counts against a hand count and the
model, FLOPs against a hand-worked example and PyTorch's FLOP counter, the KV cache against the
real cache."""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mini_llm import ops
from mini_llm.cli import main
from mini_llm.model import GPT, GPTConfig
from mini_llm.presets import PRESETS
from mini_llm.scaling.costs import model_costs, roofline_seconds


def hand_count(c):
    """The presets' shape (LayerNorm without bias, GELU MLP, learned positions, tied head):
    each block has q, k, v and the output projection (4 C^2), the MLP's C -> 4C -> C (8 C^2) and
    two norm weights (2 C); then the final norm (C)."""
    V, T, C, L = c.vocab_size, c.block_size, c.n_embd, c.n_layer
    return {"embeddings": V * C + T * C, "attention": L * 4 * C * C, "MLP": L * 8 * C * C,
            "norms": 2 * L * C + C, "head": 0}


@pytest.mark.parametrize("preset", ["tiny", "shakespeare-char-cpu", "shakespeare-char"])
def test_parameters_by_part_match_a_hand_count_and_the_model(preset):
    config = GPTConfig(**PRESETS[preset]["model"])
    costs = model_costs(config, batch_size=2)
    assert costs.params == hand_count(config)
    model = GPT(config)
    assert costs.total == sum(p.numel() for p in model.parameters())
    assert costs.total == model.num_params(non_embedding=False)
    assert model.num_params() == costs.total - config.block_size * config.n_embd  # nanoGPT's count
    C, V = config.n_embd, config.vocab_size
    assert costs.matmul_params == config.n_layer * 12 * C * C + V * C  # the tied head's matmul too


def test_an_untied_biased_swiglu_model_counts_its_head_and_biases():
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=96, bias=True,
                       norm="rmsnorm", mlp="swiglu", pos="rope", tie_weights=False)
    C, V, L = 96, 50, 2
    H = 64 * math.ceil(8 * C / 3 / 64)  # 256: SwiGLU's hidden width, rounded up to 64
    costs = model_costs(config, batch_size=1)
    assert costs.params == {"embeddings": V * C,  # rope: no position table
                            "attention": L * (4 * C * C + 4 * C),
                            "MLP": L * (C * 2 * H + 2 * H + H * C + C),
                            "norms": 2 * L * C + C,  # RMSNorm: a weight only
                            "head": V * C}
    assert costs.total == sum(p.numel() for p in GPT(config).parameters())


def test_flops_per_token_on_a_hand_worked_example():
    config = GPTConfig(**PRESETS["tiny"]["model"])  # V 65, T 16, C 32, L 2
    costs = model_costs(config, batch_size=4)
    N_mm = 2 * (4 * 32 * 32 + 8 * 32 * 32) + 65 * 32  # 26,656
    assert costs.matmul_params == N_mm
    assert costs.forward_flops(16) == 2 * N_mm + 4 * 2 * 16 * 32  # 57,408
    assert costs.training_flops() == 6 * N_mm + 12 * 2 * 16 * 32  # 172,224
    assert costs.training_step()[0] == 4 * 16 * costs.training_flops()
    assert costs.kv_bytes_per_token() == 2 * 2 * 32 * 4


@pytest.mark.parametrize("overrides", [{}, dict(n_embd=64, bias=True, mlp="swiglu", pos="rope",
                                              norm="rmsnorm", tie_weights=False)])
def test_training_flops_equal_pytorchs_flop_counter(overrides):
    # With the materialized attention every FLOP is a matmul PyTorch's counter sees; it counts
    # the full T x T square, as costs.py does.
    config = GPTConfig(**{**PRESETS["tiny"]["model"], **overrides})
    model, x = GPT(config), torch.randint(0, config.vocab_size, (3, config.block_size))
    with ops.use_kernels("attention=reference"), FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    assert counter.get_total_flops() == 3 * config.block_size * model_costs(config, 3).training_flops()


def test_kv_bytes_per_token_match_the_models_cache():
    config = GPTConfig(**PRESETS["tiny"]["model"])
    model = GPT(config)
    cache = model.new_cache(batch_size=1)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    n_bytes = (cache.k.numel() + cache.v.numel()) * cache.k.element_size()
    assert n_bytes / config.block_size == model_costs(config, 1).kv_bytes_per_token()


def test_roofline_takes_the_binding_ceiling():
    limits = {"copy_gb_s": 10.0, "matmul_tflop_s": 1.0}
    assert roofline_seconds(1e12, 1e9, limits) == (pytest.approx(1.0), "compute")
    assert roofline_seconds(1e9, 1e11, limits) == (pytest.approx(10.0), "memory")


def test_costs_command_prints_predicted_and_measured_step(capsys):
    assert main(["costs", "--preset", "tiny", "--device", "cpu", "--copy-gb-s", "10",
                 "--matmul-tflop-s", "0.5", "--measure"]) == 0
    out = capsys.readouterr().out
    total = sum(hand_count(GPTConfig(**PRESETS["tiny"]["model"])).values())
    assert f"{total:>14,}" in out and "training step measured" in out and "predicted" in out
    assert main(["costs", "--preset", "tiny", "--copy-gb-s", "10"]) == 2
    assert "give both --copy-gb-s and --matmul-tflop-s" in capsys.readouterr().err


def test_costs_command_reads_the_bench_suites_cached_ceilings(capsys):
    from mini_llm.bench.ceilings import device_name
    from mini_llm.files import cache_dir

    key = f"{device_name(torch.device('cpu'))} | torch {torch.__version__}"
    cached = {key: {"device": "a cached CPU", "copy_gb_s": 12.5, "matmul_tflop_s": 0.25}}
    cache_dir().mkdir(parents=True)
    (cache_dir() / "ceilings.json").write_text(json.dumps(cached))
    assert main(["costs", "--preset", "tiny", "--device", "cpu"]) == 0
    assert "on a cached CPU: copy 12.5 GB/s, matmul 0.25 TFLOP/s" in capsys.readouterr().out
