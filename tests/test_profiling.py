"""`mini-llm profile` and the NVTX ranges, on a CPU."""

import json

import pytest
import torch

from mini_llm import nvtx, ops
from mini_llm.cli import main
from mini_llm.errors import ConfigError
from mini_llm.model import GPT, GPTConfig


def test_profile_writes_a_trace_and_the_top_ops(tmp_path, capsys):
    assert main(["profile", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path)]) == 0
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= names  # 2 profiled steps after 2 warm-up steps
    assert "aten::mm" in (tmp_path / "top_ops.txt").read_text()  # the linear layers (no bias)
    assert "wrote" in capsys.readouterr().out


def test_profile_refuses_zero_steps(capsys):
    assert main(["profile", "--preset", "tiny", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_nvtx_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="--nvtx needs a CUDA GPU"):
        nvtx.enable()
    assert main(["train", "--preset", "tiny", "--nvtx", "--out", "unused"]) == 2


def test_ranges_name_the_op_and_its_backend(monkeypatch):
    pushed = []
    monkeypatch.setattr(nvtx, "_enabled", True)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", pushed.append)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: None)
    x = torch.randn(3, 8)
    with ops.use_kernels("layer_norm=reference"):
        ops.layer_norm(x, torch.ones(8))
        ops.gelu(x)
    with nvtx.range("step 0"):
        pass
    assert pushed == ["layer_norm[reference]", "gelu[torch]", "step 0"]


def test_each_layer_is_a_range(monkeypatch):
    pushed = []
    monkeypatch.setattr(nvtx, "_enabled", True)
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", pushed.append)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: None)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    model(torch.zeros(1, 4, dtype=torch.long))
    assert [p for p in pushed if p.startswith("layer ")] == ["layer 0", "layer 1"]
    assert pushed.index("layer 1") > pushed.index("attention[torch]") > pushed.index("layer 0")
