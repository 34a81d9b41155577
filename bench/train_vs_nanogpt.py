"""Side by side on one machine: nanoGPT's train.py and `mini-llm train`, same model and batch.

    python bench/train_vs_nanogpt.py --nanogpt PATH/TO/nanoGPT [--seeds 1337 1 2]

PATH/TO/nanoGPT is a checkout of karpathy/nanoGPT whose data/shakespeare_char/ has been prepared
(its prepare.py). The runs go one after another, never in parallel, so they do not share the CPU.
Writes train_shakespeare_char_cpu.{json,md} into --out (bench/script.py): final losses, median ms/iteration
(evaluation steps and the first 10 iterations left out), wall time, and the machine.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mini_llm.bench import script

NANOGPT_CPU_COMMAND = [  # nanoGPT README, "I only have a macbook" (CPU) section
    "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
    "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
    "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
]


def timed(cmd, **kwargs):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - t0


def run_nanogpt(folder):
    log, wall = timed([sys.executable, *NANOGPT_CPU_COMMAND], cwd=folder)
    evals = {int(m[1]): (float(m[2]), float(m[3]))
             for m in re.finditer(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", log)}
    ms = [float(m[2]) for m in re.finditer(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", log)
          if int(m[1]) > 10 and int(m[1]) not in evals]
    last = max(evals)
    return {"runner": "nanoGPT train.py", "seed": 1337, "lr": 1e-3, "iters": last,
            "train_loss": evals[last][0], "val_loss": evals[last][1],
            "median_ms_per_iter": statistics.median(ms), "wall_s": wall,
            "command": "python " + " ".join(NANOGPT_CPU_COMMAND)}


def run_ours(seed, lr, scratch):
    out = Path(scratch) / f"seed{seed}_lr{lr or 'preset'}"
    cmd = ["mini-llm", "train", "--preset", "shakespeare-char-cpu", "--seed", str(seed),
           "--log-interval", "1", "--sample-tokens", "0"]
    if lr:
        cmd += ["--lr", str(lr), "--min-lr", str(lr / 10)]
    _, wall = timed(cmd + ["--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    ms = [r["ms_per_iter"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
          if r["kind"] == "train" and r["iter"] > 10]
    return {"runner": "mini-llm train", "seed": seed, "lr": summary["train_config"]["lr"],
            "iters": summary["iters"], "train_loss": summary["train_loss"],
            "val_loss": summary["val_loss"], "median_ms_per_iter": statistics.median(ms),
            "wall_s": wall, "command": " ".join(cmd)}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": git.stdout.strip(), "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", required=True, help="a prepared nanoGPT checkout")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    script.add_out_flag(parser)
    args = parser.parse_args(argv)
    out = script.check_out(args.out)
    rows = [run_nanogpt(args.nanogpt)]
    print(rows[-1])
    with tempfile.TemporaryDirectory() as scratch:
        for lr in (None, 1e-3):  # our preset, then nanoGPT's learning rate
            for seed in args.seeds:
                rows.append(run_ours(seed, lr, scratch))
                print(rows[-1])
    result = {"benchmark": "shakespeare-char-cpu, 2000 iterations, batch 12", "machine": machine(),
              "runs": rows}
    lines = ["| runner | lr | seed | val loss | train loss | median ms/iter | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['runner']} | {r['lr']:g} | {r['seed']} | {r['val_loss']:.4f} | "
              f"{r['train_loss']:.4f} | {r['median_ms_per_iter']:.1f} | {r['wall_s']:.0f} |" for r in rows]
    m = result["machine"]
    lines.append(f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                 f"commit {m['git_commit']}, {m['date']}")
    script.write_results(out, {"train_shakespeare_char_cpu.json": json.dumps(result, indent=2) + "\n",
                               "train_shakespeare_char_cpu.md": "\n".join(lines) + "\n"})
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(script.run(main))
