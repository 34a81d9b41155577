"""The training-memory predictor against the profiler's measurement, the measurement against
tensors of known size, and activation checkpointing (same numbers, less memory)."""

import json

import pytest
import torch

from mini_llm.cli import main
from mini_llm.errors import ConfigError, KernelSelectionError
from mini_llm.memory import cpu_peak_bytes, measure_training_memory, predict_training_memory
from mini_llm.model import GPT, GPTConfig
from mini_llm.train import TrainConfig, train

GPT2 = dict(norm="layernorm", mlp="gelu", pos="learned", bias=True, tie_weights=True)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_weights=False)
FAMILIES = pytest.mark.parametrize("family", [GPT2, LLAMA], ids=["gpt2", "llama"])


def small(family, **kw):
    # T > C here, so the T x T attention matrices weigh as much as the (B,T,C) tensors.
    return GPTConfig(**{**dict(vocab_size=65, block_size=48, n_layer=2, n_head=2, n_embd=32,
                                dropout=0.1), **family, **kw})


def test_cpu_peak_counts_known_tensors():
    before = torch.empty(10_000)  # allocated before the profiler starts

    def fn():
        nonlocal before
        before = None  # its free is not reported: a count that took it would end up 40000 low
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000
        del a
        c = torch.empty(3000)  # 12000: the peak is b + c
        del b, c
        d = torch.empty(100)  # 400, after the peak
        del d

    assert cpu_peak_bytes(fn) == 16_000


@FAMILIES
@pytest.mark.parametrize("kernels", ["torch", "attention=reference"], ids=["flash", "materialized"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_prediction_matches_the_cpu_measurement(family, kernels, checkpointing):
    """The issue asks for 10%; in float32 on CPU the walk is far closer (measured: under 0.2% at
    these shapes), so 3% here makes a forgotten tensor (a dropout mask is ~4%) fail the test."""
    config = small(family)
    predicted = predict_training_memory(config, 4, kernels=kernels,
                                        activation_checkpointing=checkpointing)
    measured = measure_training_memory(config, 4, kernels=kernels,
                                       activation_checkpointing=checkpointing)
    assert predicted.peak == pytest.approx(measured, rel=0.03)


@FAMILIES
def test_bf16_autocast_prediction_on_cpu(family):
    """CPU autocast has the GPU's dtype rules for these ops (bf16 matmuls, attention and weight
    copies, fp32 norms and loss); its bf16 matmuls also take scratch from the allocator that the
    model leaves out (measured: 2-6% for GPT-2 blocks), hence 10%."""
    config = small(family)
    predicted = predict_training_memory(config, 4, dtype="bfloat16")
    measured = measure_training_memory(config, 4, dtype="bfloat16")
    assert predicted.peak == pytest.approx(measured, rel=0.10)
    assert predicted.peak < predict_training_memory(config, 4).peak


def test_breakdown_adds_up_and_checkpointing_keeps_block_inputs():
    config = small(GPT2, dropout=0.2)
    plain = predict_training_memory(config, 4)
    names = [name for name, _ in plain.activations]
    assert names == ["embeddings", "block 0", "block 1", "head + loss"]
    held = plain.parameters + plain.optimizer_state + plain.batch
    activations = sum(n for _, n in plain.activations)
    assert held + activations + plain.backward_transient == plain.backward_peak
    assert plain.peak == max(plain.forward_peak, plain.backward_peak, plain.optimizer_peak)
    assert plain.optimizer_peak > held + plain.gradients  # AdamW's temporaries on top

    ckpt = predict_training_memory(config, 4, activation_checkpointing=True)
    token_floats = 4 * 48 * 32 * 4  # a (B,T,C) float32 tensor
    rng = torch.get_rng_state().numel()
    assert [n for name, n in ckpt.activations if name.startswith("block")] == [token_floats + rng] * 2
    assert ckpt.peak < plain.peak
    # the block rerun in the backward shows up in its transient
    assert ckpt.backward_transient > plain.backward_transient


@pytest.mark.parametrize("bad,error,message", [
    (dict(batch_size=0), ConfigError, "batch size must be a positive integer"),
    (dict(dtype="float16"), ConfigError, "dtype must be float32 or bfloat16"),
    (dict(device="tpu"), ConfigError, "device must be cpu or cuda"),
    (dict(kernels="reference"), ConfigError, "reference backend for attention only"),
    (dict(kernels="attention=reference", dtype="bfloat16"), ConfigError, "float32 only"),
    (dict(kernels="attention=nope"), KernelSelectionError, "unknown backend 'nope'"),
])
def test_bad_input_is_a_clear_error(bad, error, message):
    args = {"batch_size": 4, **bad}
    with pytest.raises(error, match=message):
        predict_training_memory(small(GPT2), args.pop("batch_size"), **args)


@pytest.mark.parametrize("argv,message", [
    (["--preset", "nope"], "unknown preset 'nope'; presets: shakespeare-char"),
    (["--preset", "tiny", "--batch-size", "0"], "batch size must be a positive integer"),
    (["--preset", "tiny", "--kernels", "reference"], "reference backend for attention only"),
])
def test_cli_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(["memory", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_cli_prints_prediction_and_measurement(capsys):
    assert main(["memory", "--preset", "tiny", "--activation-checkpointing", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "activations: block 1" in out and "activation checkpointing on" in out
    ratio = float(out.strip().splitlines()[-1].split()[-1])
    assert 0.97 < ratio < 1.03


@FAMILIES
def test_checkpointing_gives_the_same_loss_and_gradients(family):
    """Dropout is on: the rerun in the backward must draw the same masks."""
    torch.manual_seed(0)
    model = GPT(small(family))
    x, y = torch.randint(0, 65, (3, 48)), torch.randint(0, 65, (3, 48))
    results = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        saved = []
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            _, loss = model(x, y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        len(saved)))
    (loss_a, grads_a, saved_a), (loss_b, grads_b, saved_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    assert saved_b < saved_a  # the blocks' insides were not kept


def test_train_with_checkpointing_resumes_a_run_without_it(corpus, tmp_path):
    """--activation-checkpointing is wired into train and may change on --resume; the losses
    are those of the run that never used it."""
    def run(out, max_iters, checkpointing, resume=False):
        cfg = TrainConfig(out=str(out), data=str(corpus), batch_size=4, max_iters=max_iters,
                          lr_decay_iters=8, warmup_iters=2, eval_interval=4, eval_iters=2,
                          log_interval=1, sample_tokens=0, activation_checkpointing=checkpointing)
        if resume:
            train({}, cfg, resume={"max_iters": max_iters, "activation_checkpointing": checkpointing})
        else:
            train(dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1), cfg)
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    whole = run(tmp_path / "whole", 8, checkpointing=False)
    run(tmp_path / "split", 4, checkpointing=False)
    split = run(tmp_path / "split", 8, checkpointing=True, resume=True)
    assert [(r["kind"], r["iter"]) for r in split] == [(r["kind"], r["iter"]) for r in whole]
    values = [[r.get("loss", r.get("val_loss")) for r in run] for run in (split, whole)]
    assert values[0] == pytest.approx(values[1], rel=1e-5)
