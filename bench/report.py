"""Writing results: a terminal table (rich), JSON for scripts, markdown for people, and a
roofline plot (arithmetic intensity vs achieved FLOP/s under the measured ceilings)."""

import dataclasses
import json
import math

from mini_llm.ops.validation import TOLERANCE

from .ceilings import describe

HEADER = ["op", "backend", "shape", "dtype", "pass", "check (rel err)", "ms", "GB/s", "TFLOP/s",
          "% copy BW", "% matmul", "vs torch"]
SKIPPED_HEADER = ["backend", "skipped, because", "ops"]


def _fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def cells(row):
    if row.status == "error":
        check = f"error: {row.reason[:60]}"
    else:
        check = f"{row.status} {row.rel_err:.0e}" + (f" ({row.reason})" if row.status == "FAILED" else "")
    ratio = _fmt(row.speedup_vs_torch, ".2f")
    return [row.op, row.backend, row.shape, row.dtype, row.pass_, check, _fmt(row.ms, ".3f"),
            _fmt(row.gb_s, ".1f"), _fmt(row.tflop_s, ".3f"), _fmt(row.pct_bandwidth, ".0f"),
            _fmt(row.pct_matmul, ".1f"), ratio and ratio + "x"]


def skipped_cells(rows):
    """One line per (backend, reason), naming the ops it covers."""
    groups = {}
    for r in rows:
        if r.status == "skipped":
            groups.setdefault((r.backend, r.reason), []).append(r.op)
    return [[backend, reason, ", ".join(names)] for (backend, reason), names in groups.items()]


def _measured(rows):
    return [r for r in rows if r.status != "skipped"]


E2E_HEADER = ["kernels", "what", "value", "unit", "detail"]


def e2e_cells(r):
    return [r["kernels"], r["what"], _fmt(r["value"], ",.1f"), r["unit"], r["detail"]]


def print_tables(rows, e2e, meta):
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)  # logs: do not wrap at 80
    limits = meta["ceilings"]
    console.print(f"[bold]{limits['device']}[/]: copy {limits['copy_gb_s']:.1f} GB/s "
                  f"(plain loop {limits['copy_gb_s_plain']:.1f}), matmul {limits['matmul']} "
                  f"{limits['matmul_tflop_s']:.3f} TFLOP/s (plain loop {limits['matmul_tflop_s_plain']:.3f}); "
                  f"{describe(limits)}")
    table = Table(*HEADER, title="ops: checked against the reference, then timed (median)")
    for row in _measured(rows):
        table.add_row(*cells(row), style="red" if row.status in ("FAILED", "error") else None)
    console.print(table)
    table = Table(*SKIPPED_HEADER, title="not run here")
    for line in skipped_cells(rows):
        table.add_row(*line, style="dim")
    console.print(table)
    if e2e:
        table = Table(*E2E_HEADER, title="end to end")
        for r in e2e:
            table.add_row(*e2e_cells(r))
        console.print(table)


def markdown(rows, e2e, meta):
    def md_table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        return lines + ["| " + " | ".join(c.replace("|", "/") for c in cells_) + " |" for cells_ in body]

    lim = meta["ceilings"]
    out = [f"# mini-llm bench: {lim['device']}", "",
           f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, commit "
           f"{meta['git_commit']}, {meta['date']}; `{meta['command']}`", "",
           f"Measured limits: copy {lim['copy_gb_s']:.1f} GB/s (plain loop "
           f"{lim['copy_gb_s_plain']:.1f}); matmul {lim['matmul']}: {lim['matmul_tflop_s']:.3f} "
           f"TFLOP/s (plain loop {lim['matmul_tflop_s_plain']:.3f}); {describe(lim)}.", ""]
    if meta.get("over_ceiling"):
        out += [f"**Warning**: {len(meta['over_ceiling'])} rows are above 100% of a ceiling "
                f"({', '.join(meta['over_ceiling'])}): the ceilings were measured low.", ""]
    tolerances = ", ".join(f"{name} {tol:.0e}" for name, tol in TOLERANCE.items())
    out += ["Each row was checked against the reference in float64 (the `torch` op in float32 where "
            f"that would not fit in memory); relative tolerances: {tolerances}. The JSON has the "
            "max-abs error and what each row was compared with.", ""]
    out += md_table(HEADER, [cells(r) for r in _measured(rows)])
    out += ["", "Not run here:", ""] + md_table(SKIPPED_HEADER, skipped_cells(rows))
    if e2e:
        out += ["", "## End to end", ""] + md_table(E2E_HEADER, [e2e_cells(r) for r in e2e])
    return "\n".join(out) + "\n"


def to_json(rows, e2e, meta):
    def clean(d):  # JSON has no NaN or infinity: write null
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}

    return json.dumps({"meta": meta, "rows": [clean(dataclasses.asdict(r)) for r in rows],
                       "end_to_end": [clean(r) for r in e2e]}, indent=2) + "\n"


def roofline(rows, meta, path):
    """log-log: x = flops per byte, y = achieved TFLOP/s; the ceilings are min(BW * x, peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in _measured(rows) if r.bytes and r.flops]
    lim = meta["ceilings"]
    bw, peak = lim["copy_gb_s"] / 1e3, lim["matmul_tflop_s"]  # TB/s, TFLOP/s
    fig, ax = plt.subplots(figsize=(11, 6))
    xs = [r.flops / r.bytes for r in measured] or [1.0]
    x = [min(xs + [peak / bw]) / 4, max(xs + [peak / bw]) * 4]
    ax.plot([x[0], peak / bw, x[1]], [bw * x[0], peak, peak], "k-", lw=1.5,
            label=f"measured ceilings: {lim['copy_gb_s']:.0f} GB/s, {peak:.2f} TFLOP/s")
    markers = dict(zip(sorted({r.op for r in measured}), "osD^v<>ph*"))
    colors = {"reference": "tab:gray", "torch": "tab:blue", "triton": "tab:orange", "cuda": "tab:green"}
    for r in measured:
        ax.scatter(r.flops / r.bytes, r.tflop_s, marker=markers[r.op], color=colors[r.backend],
                   edgecolors="red" if r.status == "FAILED" else "none", alpha=0.8, s=40)
    for op, m in markers.items():
        ax.scatter([], [], marker=m, color="black", label=op)
    for backend in sorted({r.backend for r in measured}):
        ax.scatter([], [], marker="s", color=colors[backend], label=backend)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
           ylabel="achieved TFLOP/s", title=f"roofline: {lim['device']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
