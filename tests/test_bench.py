"""The benchmark suite on tiny shapes: rows are checked, skips carry reasons, bad input is
clear, and the files a user reads are written."""

import json

import pytest
import torch

from mini_llm import ops
from mini_llm.bench import specs
from mini_llm.bench.e2e import run_e2e
from mini_llm.bench.run import run_ops
from mini_llm.cli import main

LIMITS = {"device": "test", "copy_gb_s": 10.0, "copy_gb_s_plain": 10.0, "matmul": "test",
          "matmul_tflop_s": 0.1, "matmul_tflop_s_plain": 0.1}
TINY = {"layer_norm": [dict(rows=7, cols=33)], "rms_norm": [dict(rows=5, cols=17)],
        "add_layer_norm": [dict(rows=3, cols=20)], "add_rms_norm": [dict(rows=4, cols=9)],
        "attention": [dict(B=1, nh=2, T=9, hs=32, causal=True)],
        "decode_attention": [dict(B=2, nh=4, nkv=2, T=40, hs=64, Tq=1)],
        "quant_matmul": [dict(M=3, K=64, N=10, bits=4, group=32)], "gelu": [dict(n=101)],
        "silu": [dict(n=100)], "cross_entropy": [dict(rows=6, vocab=11)]}


def expected_skips(op_names):
    """(op, backend) pairs the bench must skip here: a backend that cannot run on this machine
    (cuda without a GPU) or that has no kernel for the op (gelu has no triton kernel)."""
    return {(op, b) for op in op_names for b in ops.BACKENDS
            if ops.unavailable_reason(b) or b not in ops.implemented(op)}


@pytest.fixture(autouse=True)
def tiny_shapes(monkeypatch):
    for op, shapes in TINY.items():
        monkeypatch.setitem(specs.SPECS[op].shapes, "quick", shapes)


def test_every_op_is_checked_and_timed_and_unavailable_backends_say_why():
    rows = run_ops(list(specs.SPECS), list(ops.BACKENDS), ["float32"], "quick", ["fwd", "fwd+bwd"],
                   torch.device("cpu"), LIMITS)
    measured = [r for r in rows if r.status != "skipped"]
    every = {(op, b) for op in TINY for b in ops.BACKENDS}
    assert {(r.op, r.backend) for r in measured} == every - expected_skips(TINY)
    assert {"triton", "torch", "reference"} <= {r.backend for r in measured}  # Triton: interpreted
    assert all(r.status == "ok" and r.rel_err < 1e-5 and r.worst_err < 4e-5 and r.ms > 0 and r.gb_s > 0
               for r in measured)
    inference = [r for r in measured if r.op in ("decode_attention", "quant_matmul")]
    assert inference and all(r.pass_ == "fwd" for r in inference)  # no backward to time
    torch_rows = [r for r in measured if r.backend == "torch"]
    assert all(r.speedup_vs_torch == 1.0 for r in torch_rows)
    skipped = {(r.op, r.backend): r.reason for r in rows if r.status == "skipped"}
    assert set(skipped) == expected_skips(TINY)
    assert skipped["gelu", "triton"] == "no triton implementation of gelu yet"
    if not torch.cuda.is_available():
        assert skipped["attention", "cuda"] == "no CUDA GPU"


def test_a_wrong_kernel_is_reported_failed(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets the triton backend count as runnable
    off_by_a_bit = lambda x, w, b, eps: torch.nn.functional.layer_norm(x, (x.size(-1),), w, b, eps) * 1.001
    monkeypatch.setitem(ops.registry._impls["layer_norm"], "triton", off_by_a_bit)
    rows = run_ops(["layer_norm"], ["torch", "triton"], ["float32"], "quick", ["fwd"],
                   torch.device("cpu"), LIMITS)
    status = {r.backend: (r.status, r.rel_err) for r in rows}
    assert status["torch"][0] == "ok"
    assert status["triton"][0] == "FAILED" and status["triton"][1] == pytest.approx(1e-3, rel=0.01)


def run_triton_layer_norm(monkeypatch, kernel, shapes):
    """Run the bench on `kernel` registered as the triton layer_norm."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(ops.registry._impls["layer_norm"], "triton", kernel)
    monkeypatch.setitem(specs.SPECS["layer_norm"].shapes, "quick", shapes)
    rows = run_ops(["layer_norm"], ["triton"], ["float32"], "quick", ["fwd"], torch.device("cpu"), LIMITS)
    return rows[0]


def layer_norm(x, w, b, eps):
    return torch.nn.functional.layer_norm(x, (x.size(-1),), w, b, eps)


def test_one_wrong_element_fails_although_the_norm_would_pass(monkeypatch):
    def one_element_off(x, w, b, eps):
        y = layer_norm(x, w, b, eps)
        y[-1, -1] += 1e-3  # a tail bug: the last element of the last row
        return y

    row = run_triton_layer_norm(monkeypatch, one_element_off, [dict(rows=4096, cols=64)])
    assert row.rel_err < row.tolerance  # averaged over 262,144 elements the error vanishes...
    assert row.status == "FAILED" and row.worst_err > 4 * row.tolerance  # ...the worst does not


def test_wrong_dtype_and_exceptions_are_reported(monkeypatch):
    wide = run_triton_layer_norm(monkeypatch, lambda x, w, b, eps: layer_norm(x, w, b, eps).double(),
                                 [dict(rows=8, cols=16)])
    assert wide.status == "FAILED" and "dtype torch.float64, expected torch.float32" in wide.reason

    def broken(x, w, b, eps):
        raise RuntimeError("illegal memory access")

    row = run_triton_layer_norm(monkeypatch, broken, [dict(rows=8, cols=16)])
    assert row.status == "error" and "illegal memory access" in row.reason


def test_cost_model():
    ln = specs.SPECS["layer_norm"]
    assert ln.bytes(dict(rows=16384, cols=4096), 2, False) == (2 * 16384 * 4096 + 2 * 4096) * 2
    attn = specs.SPECS["attention"]
    causal, full = dict(B=1, nh=1, T=1024, hs=64, causal=True), dict(B=1, nh=1, T=1024, hs=64, causal=False)
    assert attn.flops(full, False) == 4 * 1024**2 * 64 == 2 * attn.flops(causal, False)
    assert attn.flops(full, True) == 3.5 * attn.flops(full, False)


def test_end_to_end_rows():
    rows = run_e2e("tiny", "torch", torch.device("cpu"), LIMITS, train_steps=2)
    values = {r["what"]: r["value"] for r in rows}
    assert set(values) == {"train throughput", "train MFU", "decode, KV cache", "decode, no cache"}
    assert all(v > 0 for v in values.values())


@pytest.mark.parametrize("argv,message", [
    (["--ops", "matmul"], "unknown op 'matmul'; choose from layer_norm, rms_norm, add_layer_norm"),
    (["--backends", "cudnn"], "unknown backend 'cudnn'; choose from reference, torch, triton, cuda"),
    (["--shapes", "huge"], "unknown shape set 'huge'; choose from quick, full"),
    (["--dtype", "int8"], "unknown dtype 'int8'; choose from float32, bfloat16, float16"),
    (["--kernels", "attention=nope"], "unknown backend 'nope'"),
])
def test_bad_input(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_command_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--ops", "layer_norm,attention", "--no-e2e", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["ceilings"]["copy_gb_s"] > 0 and result["meta"]["torch"] == torch.__version__
    skipped = [r for r in result["rows"] if r["status"] == "skipped"]
    assert {(r["op"], r["backend"]) for r in skipped} == expected_skips(["layer_norm", "attention"])
    assert all(r["reason"] for r in skipped)
    assert "| layer_norm | torch |" in (out / "results.md").read_text()
    assert (out / "roofline.png").stat().st_size > 10_000
    assert "not run here" in capsys.readouterr().out
