"""The GPU run's summary and the files it sends back (bench/gpu_run.sh calls this after every
stage, so a run cut short still returns what it did):

    python3 bench/gpu_results.py STATE OUT [--final]

STATE is the run's own folder (stages.tsv, versions.txt, logs/, work/); OUT the results folder,
of which the device tool returns at most 8 files of at most 16 MiB. They are:

  summary.txt          what ran, how long, what passed (also printed last, with --final)
  logs.tar.gz          every log (each cut to its last MiB if the archive would be too big)
  pytest_gpu.xml       the GPU test grid's JUnit report (--rerun: pytest_rerun.xml)
  bench.json           the probe's rows, as the bench suite writes them (the device named)
  bench.md             the probe's, quant_matmul's and training's tables, one after another
  results.tar.gz       the files to commit under bench/results/
  triton-cache.tar.gz  (--final) the compiled Triton kernels, for a later run to carry
  run.log              gpu_run.sh's own output (written by it, not here)

Standard library only: it runs before the package is installed.
"""

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

FILE_LIMIT = 16 * 2**20
MAX_FILES = 8
TRITON_CACHE = "triton-cache.tar.gz"
# What a later run needs to skip compiling: the binaries, their metadata and group files, the
# launchers. The IRs (ptx, llir, ttir, ttgir) are most of the bytes and Triton loads no kernel from them.
TRITON_KEEP = (".cubin", ".json", ".so")


def stage_rows(state):
    """stages.tsv: name, status, seconds, box, note per line."""
    path = state / "stages.tsv"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.split("\t") + [""] * (5 - len(line.split("\t"))) for line in lines if line]


def junit_counts(path):
    """(tests, failures, errors, skipped, seconds, failed node ids) of a JUnit report."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    seconds = sum(float(s.get("time", 0)) for s in suites)
    failed = [f"{c.get('classname', '').replace('.', '/')}.py::{c.get('name')}"
              for c in root.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    return count["tests"], count["failures"], count["errors"], count["skipped"], seconds, failed


def _fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def probe_lines(path):
    """One line per kernel row of the bench-suite JSON: time, speed-up over torch, GB/s and
    TFLOP/s with their share of the measured copy bandwidth and matmul rate."""
    data = json.loads(path.read_text())
    limits = data["meta"]["ceilings"]
    lines = [f"probe on {data['meta'].get('device')} (copy {_fmt(limits.get('copy_gb_s'), '.0f')} GB/s, "
             f"matmul {_fmt(limits.get('matmul_tflop_s'), '.0f')} TFLOP/s):"]
    for r in data["rows"]:
        if r["backend"] == "torch":
            continue
        if r["status"] == "skipped":
            lines.append(f"  {r['op']} {r['backend']}: skipped ({r['reason'][:80]})")
            continue
        lines.append(f"  {r['op']:<16} {r['backend']:<6} {r['shape']:<28} {r['pass_']:<7} {r['status']:<6} "
                     f"{_fmt(r['ms'], '8.3f')} ms {_fmt(r['speedup_vs_torch'], '5.2f')}x torch "
                     f"{_fmt(r['gb_s'], '6.0f')} GB/s ({_fmt(r['pct_bandwidth'], '.0f')}%) "
                     f"{_fmt(r['tflop_s'], '6.1f')} TFLOP/s ({_fmt(r['pct_matmul'], '.0f')}%)")
    return lines


def quant_lines(path):
    rows = json.loads(path.read_text())["rows"]
    return ["quant_matmul vs bf16 matmul:"] + [
        f"  {r['backend']:<6} M{r['M']:<5} K=N={r['K']} int{r['bits']} g{r['group']:<5} "
        f"{_fmt(r['speedup_vs_bf16'], '5.2f')}x  {r['status']}" for r in rows]


def sanitizer_lines(path):
    return ["compute-sanitizer:"] + ["  " + line for line in path.read_text().splitlines()]


def training_lines(path):
    rows = json.loads(path.read_text())
    return ["training (val loss, difference from the first kernel set, ms/iter):"] + [
        f"  {r['kernels']:<8} {r['iters']} iters  val {r['val_loss']:.4f}  {r['val_loss_diff']:+.4f}  "
        f"{r['median_ms_per_iter']:.1f} ms" for r in rows]


# The kernel issues' targets: (what, op, backends, pass, row field, at least). A probe row is
# checked on every shape it was measured at; the worst figure decides.
SUITE_TARGETS = [
    ("LayerNorm fwd >= 85% of copy bandwidth", "layer_norm", ("triton", "cuda"), "fwd", "pct_bandwidth", 85),
    ("LayerNorm fwd >= 1.0x F.layer_norm", "layer_norm", ("triton", "cuda"), "fwd", "speedup_vs_torch", 1.0),
    ("LayerNorm fwd+bwd >= 1.0x F.layer_norm", "layer_norm", ("triton", "cuda"), "fwd+bwd", "speedup_vs_torch", 1.0),
    ("attention fwd >= 0.9x SDPA", "attention", ("triton",), "fwd", "speedup_vs_torch", 0.9),
    ("attention fwd+bwd >= 0.7x SDPA", "attention", ("triton",), "fwd+bwd", "speedup_vs_torch", 0.7),
    ("attention fwd >= 0.5x SDPA", "attention", ("cuda",), "fwd", "speedup_vs_torch", 0.5),
    ("decode attention >= 70% of copy bandwidth", "decode_attention", ("triton", "cuda"), "fwd", "pct_bandwidth", 70),
    ("decode attention faster than SDPA", "decode_attention", ("triton", "cuda"), "fwd", "speedup_vs_torch", 1.0),
]
# quant_matmul vs a bf16 matmul: (what, bits, rows of activations, at least)
QUANT_TARGETS = [("int8 >= 1.6x bf16 at M <= 16", 8, range(1, 17), 1.6),
                 ("int4 >= 2.5x bf16 at M <= 16", 4, range(1, 17), 2.5),
                 ("int8 / int4 >= 0.6x bf16 at M = 2048", None, (2048,), 0.6)]


def _verdict(what, backend, rows, threshold):
    """rows: (figure, where, status) of every matching row; a failed row, or the worst figure
    under the threshold, misses."""
    if not rows:
        return f"  [not measured] {backend} {what}"
    broken = [where for _, where, status in rows if status != "ok"]
    if broken:
        return f"  [MISSED] {backend} {what}: wrong or no result at {', '.join(broken)}"
    value, where, _ = min(rows, key=lambda r: r[0] if r[0] is not None else float("-inf"))
    met = value is not None and value >= threshold
    return f"  [{'met' if met else 'MISSED'}] {backend} {what}: {_fmt(value, '.2f')} (worst: {where})"


def target_lines(suite_json, quant_json):
    """One line per target and backend: met / MISSED with the worst measured figure."""
    lines = ["targets (the worst shape decides):"]
    rows = json.loads(suite_json.read_text())["rows"] if suite_json.is_file() else []
    for what, op, backends, pass_, field, threshold in SUITE_TARGETS:
        for backend in backends:
            found = [(r[field], r["shape"], r["status"]) for r in rows
                     if (r["op"], r["backend"], r["pass_"]) == (op, backend, pass_)]
            lines.append(_verdict(what, backend, found, threshold))
    quant = json.loads(quant_json.read_text())["rows"] if quant_json.is_file() else []
    for what, bits, tokens, threshold in QUANT_TARGETS:
        for backend in sorted({r["backend"] for r in quant}):
            found = [(r["speedup_vs_bf16"], f"M{r['M']} int{r['bits']} g{r['group']}", r["status"]) for r in quant
                     if r["backend"] == backend and r["M"] in tokens and bits in (None, r["bits"])]
            lines.append(_verdict(what, backend, found, threshold))
    return lines


def junit_lines(path):
    tests, failures, errors, skipped, seconds, failed = junit_counts(path)
    lines = [f"{path.name}: {tests} tests, {failures} failed, {errors} errors, {skipped} skipped, {seconds:.0f} s"]
    if failed:
        lines += [f"failed tests ({len(failed)}; `bash bench/gpu_run.sh --rerun` reruns them, or pass their ids):"]
        lines += ["  " + f for f in failed[:100]]
    return lines


def summary(state):
    """The run's story: versions, stages, then each result that exists, the targets last."""
    work, bench, header = state / "work", state / "work" / "bench", state / "header.txt"
    out = [f"gpu_run {state.name}: {header.read_text().strip() if header.is_file() else ''}"]
    if (state / "versions.txt").is_file():
        out += ["versions:"] + ["  " + line for line in (state / "versions.txt").read_text().splitlines()]
    out += ["", f"{'stage':<10} {'status':<18} {'seconds':>7} {'box':>5}  note"]
    out += [f"{n:<10} {s:<18} {t:>7} {b:>5}  {note}" for n, s, t, b, note in stage_rows(state)]
    sections = [(p, junit_lines) for p in sorted(work.glob("pytest_*.xml"))]
    sections += [(work / "sanitizer.txt", sanitizer_lines), (bench / "results.json", probe_lines),
                 (bench / "quant_vs_bf16_gpu.json", quant_lines)]
    sections += [(p, training_lines) for p in sorted(bench.glob("train_kernel_sets_*.json"))]
    if (bench / "results.json").is_file() or (bench / "quant_vs_bf16_gpu.json").is_file():
        sections.append((bench, lambda b: target_lines(b / "results.json", b / "quant_vs_bf16_gpu.json")))
    for path, lines in sections:
        if path.exists():
            try:
                out += [""] + lines(path)
            except (ValueError, KeyError, ET.ParseError) as e:  # a stage cut mid-write: say so, go on
                out += ["", f"{path.name}: unreadable ({type(e).__name__}: {e})"]
    return "\n".join(out) + "\n"


def tar_gz(dest, files, base, cut=None):
    """files (under base) -> dest.tar.gz; each cut to its last `cut` bytes when given."""
    with tarfile.open(dest, "w:gz") as tar:
        for f in files:
            if cut and f.stat().st_size > cut:
                with open(f, "rb") as fh:
                    fh.seek(-cut, os.SEEK_END)
                    data = b"[cut to the last %d bytes]\n" % cut + fh.read()
                info = tarfile.TarInfo(str(f.relative_to(base)))
                info.size, info.mtime = len(data), int(f.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.add(f, arcname=str(f.relative_to(base)))


def files_under(folder, keep=None):
    return sorted(p for p in folder.rglob("*") if p.is_file() and (keep is None or p.suffix in keep)) \
        if folder.is_dir() else []


def package(state, out, final):
    """Write OUT's files (see the module's doc); returns the notes on what did not fit."""
    work, notes = state / "work", []
    out.mkdir(parents=True, exist_ok=True)
    logs = files_under(state / "logs")
    tar_gz(out / "logs.tar.gz", logs, state)
    if (out / "logs.tar.gz").stat().st_size > FILE_LIMIT:
        tar_gz(out / "logs.tar.gz", logs, state, cut=2**20)
        notes.append("logs.tar.gz: logs cut to their last MiB")
    for junit in sorted(work.glob("pytest_*.xml")):  # pytest_gpu.xml, or the rerun's pytest_rerun.xml
        shutil.copy2(junit, out / junit.name)
    if (work / "bench" / "results.json").is_file():
        shutil.copy2(work / "bench" / "results.json", out / "bench.json")
    tables = [work / "bench" / n for n in ("results.md", "quant_vs_bf16_gpu.md")]
    tables += sorted((work / "bench").glob("train_kernel_sets_*.md"))
    tables = [t for t in tables if t.is_file()]
    if tables:
        (out / "bench.md").write_text("\n".join(t.read_text() for t in tables))
    results = files_under(work / "bench") + [p for p in (work / "sanitizer.txt",) if p.is_file()]
    if results:
        tar_gz(out / "results.tar.gz", results, work)
    cache = Path(os.environ.get("TRITON_CACHE_DIR") or "/nonexistent")  # gpu_run.sh sets it
    if final and cache.is_dir():
        tar_gz(out / TRITON_CACHE, files_under(cache, TRITON_KEEP), cache)
        if (out / TRITON_CACHE).stat().st_size > FILE_LIMIT:
            notes.append(f"{TRITON_CACHE}: over 16 MiB, left out")
            (out / TRITON_CACHE).unlink()
    for f in files_under(out):
        if f.stat().st_size > FILE_LIMIT:
            notes.append(f"{f.name}: over 16 MiB, left out")
            f.unlink()
    files = files_under(out)
    if len(files) > MAX_FILES or any(f.parent != out for f in files):  # OUT held other files: the tool empties it
        notes.append(f"{len(files)} files under {out}: the device tool returns {MAX_FILES}, one folder deep")
    return notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("state", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--final", action="store_true", help="also archive the Triton cache; print the summary")
    args = p.parse_args(argv)
    notes = package(args.state, args.out, args.final)
    text = summary(args.state)
    listing = [f"  {f.name:<20} {f.stat().st_size / 2**20:7.2f} MiB" for f in files_under(args.out)
               if f.name != "summary.txt"]
    listing += ["  summary.txt"] + ["  " + n for n in notes]
    text += "\nfiles in the results folder:\n" + "\n".join(listing) + "\n"
    (args.out / "summary.txt").write_text(text)
    if args.final:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
