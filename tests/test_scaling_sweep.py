"""The scaling sweep: the shape rule, the isoFLOP plan spending each budget, a tiny sweep through
the training loop that `scaling fit` can read, skipping finished runs, and bad budgets."""

import pytest

from mini_llm import train as train_module
from mini_llm.cli import main
from mini_llm.errors import ConfigError
from mini_llm.scaling.costs import model_costs
from mini_llm.scaling.sweep import (HEAD_SIZE, Settings, flops_of, plan_grid, plan_isoflop, run_sweep,
                                    shape_for)
from mini_llm.scaling.table import read_runs


def test_the_shape_rule_grows_width_and_depth_together():
    sizes = [1e4, 3e4, 1e5, 3e5]
    configs = [shape_for(n, 65, 64) for n in sizes]
    for n, c in zip(sizes, configs):
        assert c.n_embd == HEAD_SIZE * c.n_head and 16 <= c.n_embd / c.n_layer <= 64
        assert 0.7 < model_costs(c, 1, activations=False).non_embedding / n < 1.4
    counts = [model_costs(c, 1, activations=False).non_embedding for c in configs]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_each_isoflop_run_spends_its_budget(tmp_path):
    s = Settings(out=str(tmp_path))
    planned = plan_isoflop([1e11, 1e12], s, 65)
    for budget in (1e11, 1e12):
        runs = [p for p in planned if p.budget == budget]
        assert len(runs) == 5  # sizes from D/N = 4 to 1024, each its own shape
        for p in runs:  # whole iterations: within half an iteration of the budget
            per_iter = flops_of(p, s) / p.iters
            assert abs(flops_of(p, s) - budget) <= per_iter / 2 + 1


def test_a_tiny_sweep_writes_a_table_the_fit_reads_and_skips_finished_runs(corpus, tmp_path, monkeypatch):
    s = Settings(out=str(tmp_path / "sweep"), data=str(corpus), block_size=16, batch_size=4, eval_iters=2)
    planned = plan_grid([3e3, 1.2e4], [800, 1600], s, s.dataset()[0])
    rows = run_sweep(planned, s)
    assert len(rows) == 4 and all(r["loss"] > 0 and r["epochs"] > 0 for r in rows)
    runs = read_runs(tmp_path / "sweep" / "runs.csv")
    assert len(runs) == 4 and list(runs.D) == [r["tokens"] for r in rows]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mini_llm.scaling.sweep.train", no_training)
    assert run_sweep(planned, s) == rows  # read back from each run's summary.json


def test_a_budget_too_small_is_a_clear_error(corpus, tmp_path, capsys):
    with pytest.raises(ConfigError, match="buys 0 iterations"):
        plan_isoflop([1e6], Settings(out=str(tmp_path)), 65)
    code = main(["scaling", "sweep", "--out", str(tmp_path / "s"), "--data", str(corpus), "--budgets", "1e6"])
    assert code == 2 and "buys 0 iterations" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_the_training_loop_is_the_one_that_trains(corpus, tmp_path, monkeypatch):
    """Every sweep run goes through train.train (the shared loop), with its own schedule."""
    seen = []
    real = train_module.train

    def spy(model, cfg, resume=None):
        seen.append((cfg.max_iters, cfg.lr_decay_iters, cfg.warmup_iters))
        return real(model, cfg, resume)

    monkeypatch.setattr("mini_llm.scaling.sweep.train", spy)
    s = Settings(out=str(tmp_path / "sweep"), data=str(corpus), block_size=16, batch_size=4, eval_iters=2)
    run_sweep(plan_grid([3e3], [800], s, s.dataset()[0]), s)
    assert seen == [(12, 12, 1)]  # 800 tokens / 64 per iteration; the schedule ends with the run
