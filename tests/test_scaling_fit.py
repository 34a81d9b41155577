"""The scaling-law fits (mini_llm/scaling): they recover known constants from synthetic runs,
approach 2 agrees with the analytic optimum, bad tables and failed fits are clear errors."""

import csv
import json
import re

import numpy as np
import pytest
from scipy.optimize import OptimizeResult, minimize_scalar

from mini_llm.cli import main
from mini_llm.errors import DataError, FitError
from mini_llm.scaling import parametric
from mini_llm.scaling.fit import fit_runs
from mini_llm.scaling.isoflop import fit_isoflop
from mini_llm.scaling.parametric import ScalingLaw, fit_parametric
from mini_llm.scaling.table import Runs, read_runs

CHINCHILLA = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.


def isoflop_design(law, budgets, sizes=7, spread=1.5):
    """For each budget C, `sizes` models from N_opt(C) / e^spread to N_opt(C) * e^spread, each
    trained on D = C / (6 N) tokens. Returns N, D, C arrays."""
    N = np.concatenate([law.n_opt(C) * np.exp(np.linspace(-spread, spread, sizes)) for C in budgets])
    C = np.repeat(budgets, sizes)
    return N, C / (6 * N), C


def noisy_loss(law, N, D, noise, seed=0):
    """The law's loss times exp(normal(0, noise)): small multiplicative noise."""
    return law.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, len(N)))


def write_table(path, N, D, C, L, **extra):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "params_with_embeddings", "tokens", "flops", "loss", *extra])
        for i in range(len(N)):
            w.writerow([N[i], N[i] + 1e6, D[i], C[i], L[i], *(v[i] for v in extra.values())])
    return path


BUDGETS = np.logspace(18, 21, 4)


def test_n_opt_formula_minimises_the_law_at_fixed_compute():
    # The theory that approach 2 is checked against: N_opt ~ C^(beta / (alpha + beta)).
    for C in (1e18, 1e21):
        best = minimize_scalar(lambda x: CHINCHILLA.loss(np.exp(x), C / (6 * np.exp(x))),
                               bounds=(5, 40), method="bounded", options={"xatol": 1e-9})
        assert np.exp(best.x) == pytest.approx(CHINCHILLA.n_opt(C), rel=1e-5)
    assert CHINCHILLA.n_opt_exponent() == pytest.approx(0.28 / 0.62)


def test_approach3_recovers_the_constants_from_noisy_runs():
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS)
    fit = fit_parametric(N, D, noisy_loss(CHINCHILLA, N, D, noise=0.002)).law
    for name in ("alpha", "beta", "E"):
        assert getattr(fit, name) == pytest.approx(getattr(CHINCHILLA, name), rel=0.04), name
    assert fit.n_opt_exponent() == pytest.approx(CHINCHILLA.n_opt_exponent(), rel=0.04)


def test_approach2_matches_the_analytic_optimum():
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS)
    exact = fit_isoflop(N, D, C, CHINCHILLA.loss(N, D))
    # A parabola in log N is only near the true profile, so the minima are close, not equal.
    for bud in exact.budgets:
        assert bud.N_opt == pytest.approx(CHINCHILLA.n_opt(bud.C), rel=0.05)
    assert exact.a == pytest.approx(CHINCHILLA.n_opt_exponent(), abs=0.01)
    assert exact.a + exact.b == pytest.approx(1)  # C = 6ND exactly
    noisy = fit_isoflop(N, D, C, noisy_loss(CHINCHILLA, N, D, noise=0.002))
    assert noisy.a == pytest.approx(CHINCHILLA.n_opt_exponent(), rel=0.04)


def test_approach2_groups_budgets_within_the_tolerance_and_skips_a_minimum_outside_the_sizes():
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS)
    C = C * np.random.default_rng(0).uniform(0.99, 1.01, len(C))  # as measured runs would be
    N[C > 5e20] *= 20  # the largest budget only tried models far too large
    D = C / (6 * N)
    iso = fit_isoflop(N, D, C, CHINCHILLA.loss(N, D))
    assert [len(bud.index) for bud in iso.budgets] == [7] * 4
    assert iso.budgets[-1].skipped and "outside the sizes it tried" in iso.budgets[-1].skipped
    assert len(iso.used()) == 3 and "skipped" in iso.notes[0]


def test_too_few_budgets_for_approach2_still_fits_approach3(tmp_path):
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS[:2])
    keep = np.r_[0:7, 9:11]  # the second budget keeps 2 sizes: no parabola
    N, D, C = N[keep], D[keep], C[keep]
    table = write_table(tmp_path / "runs.csv", N, D, C, CHINCHILLA.loss(N, D))
    summary, iso, law = fit_runs(read_runs(table), n_boot=0)
    assert iso is None and "found 1 of 2" in summary["approach2"]["error"]
    assert "a parabola needs 3" in summary["approach2"]["error"]
    assert law is not None and summary["approach3"]["alpha"] > 0


def test_fit_writes_fit_json_and_plots_and_keeps_them_without_force(tmp_path, capsys):
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS[:3], sizes=5)
    L = noisy_loss(CHINCHILLA, N, D, noise=0.002)
    table = write_table(tmp_path / "runs.csv", N, D, C, L, lr=np.full(len(N), 1e-3))
    out = tmp_path / "fit"
    assert main(["scaling", "fit", str(table), "--out", str(out), "--bootstrap", "8"]) == 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["n_runs"] == len(N) and fit["params_column"] == "params"
    a3 = fit["approach3"]
    for name in ("E", "A", "B", "alpha", "beta"):
        lo, hi = a3["intervals"][name]
        assert lo <= hi and np.isfinite([lo, hi]).all()
    assert fit["approach2"]["a"] == pytest.approx(CHINCHILLA.n_opt_exponent(), rel=0.05)
    assert len(fit["approach2"]["intervals"]["a"]) == 2
    written = {name: (out / name).read_bytes() for name in ("isoflop.png", "n_opt.png", "contours.png")}
    assert all(data.startswith(b"\x89PNG") for data in written.values())
    printed = capsys.readouterr().out
    assert f"alpha {a3['alpha']:.4g} [" in printed and "N = params_with_embeddings" in printed

    assert main(["scaling", "fit", str(table), "--out", str(out), "--bootstrap", "0"]) == 2
    assert "fit.json exists; pass --force" in capsys.readouterr().err
    assert json.loads((out / "fit.json").read_text()) == fit

    assert main(["scaling", "fit", str(table), "--out", str(out), "--bootstrap", "0", "--force",
                 "--params-column", "params_with_embeddings"]) == 0
    refit = json.loads((out / "fit.json").read_text())
    assert refit["params_column"] == "params_with_embeddings"
    assert refit["approach3"]["alpha"] != a3["alpha"]  # N counted differently, another exponent
    # Both fit.json files carry both counts' exponents, side by side, and agree on them.
    both = fit["exponents_by_params_column"]
    assert both == refit["exponents_by_params_column"]
    assert both["params"]["approach3"]["alpha"] == a3["alpha"]
    assert both["params_with_embeddings"]["approach3"]["alpha"] == refit["approach3"]["alpha"]


def test_bootstrap_is_seeded():
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS[:3], sizes=5)
    L = noisy_loss(CHINCHILLA, N, D, noise=0.002)
    runs = Runs(N, D, C, L, lines=np.arange(len(N)) + 2, params_column="params")
    first, second = (fit_runs(runs, n_boot=4, seed=7)[0] for _ in range(2))
    assert first["approach3"]["intervals"] == second["approach3"]["intervals"]
    assert first["approach2"]["intervals"] == second["approach2"]["intervals"]


GOOD = "params,tokens,flops,loss,lr\n1e6,2e7,1.2e14,3.1,1e-3\n"


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("params,tokens,flops,loss\n", "has a header but no runs"),
    ("params,tokens,loss\n1e6,2e7,3.1\n", "line 1: missing column(s) flops"),
    (GOOD + "2e6,abc,1.2e14,3.0,1e-3\n", "line 3: tokens is 'abc', not a number"),
    (GOOD + "2e6,1e7,1.2e14,0,1e-3\n", "line 3: loss must be a positive finite number, got '0'"),
    (GOOD + "\n2e6,1e7,1.2e14,nan,1e-3\n", "line 4: loss must be a positive finite number"),
    (GOOD + "2e6,1e7,1.2e14\n", "line 3: 3 fields, the header has 5"),
])
def test_a_bad_table_is_named_by_its_line_and_nothing_is_written(tmp_path, capsys, text, message):
    table = tmp_path / "runs.csv"
    table.write_text(text)
    with pytest.raises(DataError, match=re.escape(message)):
        read_runs(table)
    out = tmp_path / "fit"
    assert main(["scaling", "fit", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mini-llm: error: {table}") and err.count("\n") == 1
    assert not out.exists()


def test_a_missing_table_and_an_unknown_params_column_are_errors(tmp_path):
    with pytest.raises(DataError, match="no run table at"):
        read_runs(tmp_path / "absent.csv")
    (tmp_path / "runs.csv").write_text(GOOD)
    with pytest.raises(DataError, match="missing column.s. params_with_embeddings"):
        read_runs(tmp_path / "runs.csv", "params_with_embeddings")
    with pytest.raises(DataError, match="--params-column must be one of"):
        read_runs(tmp_path / "runs.csv", "flops")


def test_a_fit_that_does_not_converge_is_an_error_and_keeps_the_last_fit(tmp_path, monkeypatch, capsys):
    N, D, C = isoflop_design(CHINCHILLA, BUDGETS[:1], sizes=7)  # one budget: no approach 2 either
    table = write_table(tmp_path / "runs.csv", N, D, C, CHINCHILLA.loss(N, D))
    out = tmp_path / "fit"
    out.mkdir()
    (out / "fit.json").write_text("{}")

    def fails(fun, x0, **kwargs):
        return OptimizeResult(x=x0, fun=fun(x0, *kwargs["args"])[0], success=False,
                              message="ABNORMAL: line search failed")

    monkeypatch.setattr(parametric, "minimize", fails)
    with pytest.raises(FitError, match="did not converge from any of 16 starting points .L-BFGS: AB"):
        fit_parametric(N, D, CHINCHILLA.loss(N, D))
    assert main(["scaling", "fit", str(table), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "approach 3 did not converge" in err and "approach 2 needs 2 or more" in err
    assert (out / "fit.json").read_text() == "{}"
    assert [p.name for p in out.iterdir()] == ["fit.json"]
