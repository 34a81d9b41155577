"""The cached speed ceilings: re-checked at each run, re-measured when they drift, and rows
above 100% of them flagged (ceilings measured on a busy machine are too low)."""

import json
import math

import torch

from mini_llm.bench import ceilings as ceilings_module
from mini_llm.bench.ceilings import DRIFT, ceilings, describe, over_ceiling
from mini_llm.bench.run import Row
from mini_llm.files import cache_dir

CPU = torch.device("cpu")


def fake_workloads(copy_gb_s, matmul_tflop_s):
    """No work: the quick check then sees these rates whatever the timer says."""
    return lambda device: (lambda: None, lambda: None, lambda ms: copy_gb_s,
                           lambda ms: matmul_tflop_s, "fake")


def cache(limits):
    key = f"{ceilings_module.device_name(CPU)} | torch {torch.__version__}"
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / "ceilings.json").write_text(json.dumps({key: limits}))


def test_cached_ceilings_that_a_quick_check_agrees_with_are_kept(monkeypatch, capsys):
    cached = {"copy_gb_s_plain": 10.0, "matmul_tflop_s_plain": 0.1, "copy_gb_s": 10.0}
    cache(cached)
    monkeypatch.setattr(ceilings_module, "workloads", fake_workloads(10.0 * (1 + DRIFT / 2), 0.1))
    assert ceilings(CPU) == cached
    assert "warning" not in capsys.readouterr().err


def test_cached_ceilings_from_a_busy_machine_are_measured_again(monkeypatch, capsys):
    busy = {"copy_gb_s_plain": 10.5, "matmul_tflop_s_plain": 0.045, "measured": "2026-01-01T00:00:00",
            "load_per_core": 3.0}
    cache(busy)
    monkeypatch.setattr(ceilings_module, "workloads", fake_workloads(10.5, 0.138))
    fresh = {"copy_gb_s_plain": 32.0, "matmul_tflop_s_plain": 0.138}
    monkeypatch.setattr(ceilings_module, "measure", lambda device: fresh)
    assert ceilings(CPU) == fresh
    err = capsys.readouterr().err
    assert "measured 2026-01-01T00:00:00, load 3.00 per core" in err and "207% off" in err  # 0.138 / 0.045 - 1
    assert ceilings(CPU, remeasure=False) == fresh  # cached now


def test_rows_above_a_ceiling_are_listed():
    rows = [Row("attention", "torch", shape="B4", pass_="forward", pct_matmul=185.0, pct_bandwidth=20.0),
            Row("layer_norm", "torch", pass_="forward", pct_bandwidth=80.0),
            Row("gelu", "triton", status="skipped")]  # not measured: NaN
    e2e = [{"what": "train MFU", "kernels": "torch", "value": 124.5, "unit": "%"},
           {"what": "train throughput", "kernels": "torch", "value": 5000.0, "unit": "tokens/s"}]
    assert math.isnan(rows[2].pct_matmul)
    assert over_ceiling(rows, e2e) == ["attention torch forward B4 (185%)", "train MFU torch (124%)"]


def test_a_cache_from_before_the_date_and_load_were_kept_says_so():
    assert describe({}) == "measured at an unrecorded time, load unrecorded"
