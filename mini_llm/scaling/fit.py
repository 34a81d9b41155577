"""`mini-llm scaling fit RUNS --out DIR`: fit scaling laws to a run table and write the fit.

Both of Hoffmann et al.'s (2022) fits that need no extra runs: approach 2 (isoflop.py: a
parabola per compute budget, then power laws in C) and approach 3 (parametric.py: L(N, D) =
E + A/N^alpha + B/D^beta). Their confidence intervals come from the bootstrap: resample the runs
with replacement, refit, take percentiles (Besiroglu et al. 2024 showed how wide they are).

Writes DIR/fit.json and the plots (plots.py) only once everything is computed, each file
atomically, so a failed fit leaves an earlier one as it was; an existing fit.json is kept
unless force.
"""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from ..errors import ConfigError, DataError, FitError
from .isoflop import fit_isoflop
from .parametric import HUBER_DELTA, fit_parametric
from .plots import contours_png, isoflop_png, n_opt_png
from .table import PARAMS_COLUMNS, read_runs

BOOTSTRAP_STARTS = 4  # a resample starts from the full fit and this many grid points


def _interval(samples, level):
    """The central `level` percentile interval of each column of samples, {name: [lo, hi]}."""
    tail = 100 * (1 - level) / 2
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
            for name, v in samples.items()}


def bootstrap(runs, law, isoflop, n_boot, seed, level, rel_tol):
    """Refit approach 3 (if law, the full data's fit, is not None) and approach 2 (if isoflop) on
    n_boot resamples of the runs. Returns (approach-3 intervals, approach-2 intervals, failures
    of each): a resample that cannot be fitted (too few sizes left in a budget, no convergence)
    is counted, not used."""
    rng = np.random.default_rng(seed)
    draws3 = {k: [] for k in ("E", "A", "B", "alpha", "beta", "a")}
    draws2 = {"a": [], "b": []}
    failed3 = failed2 = 0
    for _ in range(n_boot):
        r = runs.take(rng.integers(0, len(runs), len(runs)))
        if law is not None:
            try:
                fit = fit_parametric(r.N, r.D, r.L, starts=BOOTSTRAP_STARTS, init=law).law
                for k, v in {**asdict(fit), "a": fit.n_opt_exponent()}.items():
                    draws3[k].append(v)
            except FitError:
                failed3 += 1
        if isoflop:
            try:
                iso = fit_isoflop(r.N, r.D, r.C, r.L, rel_tol)
                draws2["a"].append(iso.a)
                draws2["b"].append(iso.b)
            except FitError:
                failed2 += 1
    intervals3 = _interval(draws3, level) if draws3["E"] else None
    intervals2 = _interval(draws2, level) if draws2["a"] else None
    return intervals3, intervals2, failed3, failed2


def _fits(runs, rel_tol):
    """(ParametricFit or None, IsoFLOPFit or None, {approach: why it failed})."""
    parametric = iso = None
    errors = {}
    try:
        parametric = fit_parametric(runs.N, runs.D, runs.L)
    except FitError as e:
        errors["approach3"] = str(e)
    try:
        iso = fit_isoflop(runs.N, runs.D, runs.C, runs.L, rel_tol)
    except FitError as e:
        errors["approach2"] = str(e)
    return parametric, iso, errors


def exponents(parametric, iso):
    """The exponents only: what changes when N is counted another way."""
    law = parametric and parametric.law
    return {"approach3": law and {"alpha": law.alpha, "beta": law.beta, "a": law.n_opt_exponent()},
            "approach2": iso and {"a": iso.a, "b": iso.b}}


def fit_runs(runs, n_boot=200, seed=0, level=0.95, rel_tol=0.05):
    """Both fits and their intervals as a JSON-ready dict, with the fit objects for the plots:
    (summary, IsoFLOPFit or None, ScalingLaw or None). Raises FitError if neither fit works."""
    parametric, iso, errors = _fits(runs, rel_tol)
    if parametric is None and iso is None:
        raise FitError(f"{errors['approach3']}; {errors['approach2']}")
    law = parametric and parametric.law
    intervals3, intervals2, failed3, failed2 = bootstrap(runs, law, iso is not None, n_boot, seed,
                                                          level, rel_tol)
    summary = {
        "n_runs": len(runs), "params_column": runs.params_column,
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": level},
        "approach3": {"error": errors["approach3"]} if law is None else {
            **asdict(law),
            "a": law.n_opt_exponent(), "b": 1 - law.n_opt_exponent(),  # N_opt, D_opt ~ C^a, C^b
            "huber_delta": HUBER_DELTA, "objective": parametric.objective,
            "starts": parametric.starts, "converged_starts": parametric.converged_starts,
            "intervals": intervals3, "bootstrap_failed": failed3},
        "approach2": {"error": errors["approach2"]} if iso is None else {
            "a": iso.a, "k_N": iso.k_N, "b": iso.b, "k_D": iso.k_D, "rel_tol": rel_tol,
            "budgets": [{"flops": bud.C, "runs": len(bud.index), "N_opt": bud.N_opt,
                         "D_opt": bud.D_opt, "loss_at_N_opt": bud.L_opt, "skipped": bud.skipped}
                        for bud in iso.budgets],
            "notes": iso.notes, "intervals": intervals2, "bootstrap_failed": failed2},
        # nanochat's point: the exponents move with how N is counted. Every count the table has.
        "exponents_by_params_column": {runs.params_column: exponents(parametric, iso)},
    }
    return summary, iso, law


def check_out(out, force):
    fit_json = Path(out) / "fit.json"
    if fit_json.exists() and not force:
        raise ConfigError(f"{fit_json} exists; pass --force to overwrite it")


def fit_table(path, out, params_column="params", n_boot=200, seed=0, level=0.95, rel_tol=0.05,
              force=False):
    """Read, fit, plot, then write everything into `out`. Returns the summary."""
    if not 0 < level < 1:
        raise ConfigError(f"--level must be between 0 and 1, got {level}")
    if n_boot < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {n_boot}")
    if rel_tol < 0:
        raise ConfigError(f"--budget-tolerance must be >= 0, got {rel_tol}")
    check_out(out, force)
    runs = read_runs(path, params_column)
    summary, iso, law = fit_runs(runs, n_boot, seed, level, rel_tol)
    summary = {"runs": str(path), **summary}
    for column in PARAMS_COLUMNS:  # the other count of N too, where the table has it
        if column != params_column and column in runs.columns:
            try:
                other = exponents(*_fits(read_runs(path, column), rel_tol)[:2])
            except DataError as e:  # e.g. a blank cell: the main fit stands without it
                other = {"error": str(e)}
            summary["exponents_by_params_column"][column] = other
    files = {}
    if iso is not None:
        files["isoflop.png"] = isoflop_png(runs, iso)
        files["n_opt.png"] = n_opt_png(iso, law)
    if law is not None:
        files["contours.png"] = contours_png(runs, law)
    files["fit.json"] = (json.dumps(summary, indent=2) + "\n").encode()  # last: marks it done
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_out(out, force)  # again: another process may have written one meanwhile
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    return summary


def format_summary(summary):
    """fit.json's main figures as text: the constants with their intervals, then the exponents
    for each count of N."""
    lines = []
    for name, shown in (("approach3", ("E", "A", "B", "alpha", "beta", "a")),
                        ("approach2", ("a", "b"))):
        fit = summary[name]
        if "error" in fit:
            lines.append(f"{name}: not fitted: {fit['error']}")
            continue
        intervals = fit["intervals"] or {}
        lines.append(f"{name}: " + ", ".join(
            f"{k} {fit[k]:.4g}" + (" [{:.4g}, {:.4g}]".format(*intervals[k]) if k in intervals else "")
            for k in shown))
        lines += [f"  note: {note}" for note in fit.get("notes", [])]
    for column, fits in summary["exponents_by_params_column"].items():
        lines.append(f"N = {column:<22} " + fits.get("error", "; ".join(
            f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            for name, values in fits.items() if values)))
    boot = summary["bootstrap"]
    lines.append(f"{summary['n_runs']} runs; N = {summary['params_column']}; {boot['level']:.0%} "
                 f"intervals from {boot['resamples']} bootstrap resamples (seed {boot['seed']}); "
                 "a, b: N_opt ~ C^a, D_opt ~ C^b")
    return "\n".join(lines)
