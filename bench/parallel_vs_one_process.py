"""A parallel run of `shakespeare-char-cpu` beside one process: the validation loss at every
evaluation, read from the runs' own files (summary.json, metrics.jsonl).

    OMP_NUM_THREADS=1 mini-llm train --preset shakespeare-char-cpu --device cpu --out A
    mini-llm train --preset shakespeare-char-cpu --device cpu --out B --nproc-per-node 2 --parallel ddp
    mini-llm train --preset shakespeare-char-cpu --device cpu --out C --nproc-per-node 2 --parallel fsdp
    python bench/parallel_vs_one_process.py A B [C ...] --out bench/results/parallel_vs_one_process_cpu

The first run is the reference. The runs are equal up to float rounding (the global batch is
summed in another order); over hundreds of steps that rounding grows into differences
far smaller than the spread between two seeds.
"""

import argparse
import json
from pathlib import Path

from mini_llm.plot import read_metrics


def describe(summary):
    cfg = summary["train_config"]
    ranks = summary.get("ranks", 1)
    how = f"{cfg['parallel']}, {ranks} ranks" if cfg.get("parallel") else "one process"
    return f"{how}, {summary['device']}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders; the first is the reference")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    runs = []
    for folder in args.runs:
        summary = json.loads((Path(folder) / "summary.json").read_text())
        evals = {r["iter"]: r["val_loss"] for r in read_metrics(folder) if r["kind"] == "eval"}
        bytes_sent = [r["bytes_sent"] for r in read_metrics(folder) if r.get("bytes_sent")]
        runs.append({"run": describe(summary), "val_loss": evals, "final_val_loss": summary["val_loss"],
                     "median_ms_per_iter": summary["median_ms_per_iter"],
                     "bytes_sent_per_step": bytes_sent[-1] if bytes_sent else None})
    iters = sorted(runs[0]["val_loss"])
    lines = [f"shakespeare-char-cpu, {iters[-1]} iterations, global batch 12, on the 2-core CPU "
             "(the ranks share the 2 cores, one thread each); validation loss at each evaluation", "",
             "| run | " + " | ".join(f"iter {i}" for i in iters) + " | final - reference | ms/iter | bytes sent per step |",
             "|---|" + "---|" * (len(iters) + 3)]
    reference = runs[0]["final_val_loss"]
    for r in runs:
        lines.append(f"| {r['run']} | " + " | ".join(f"{r['val_loss'][i]:.4f}" for i in iters)
                     + f" | {r['final_val_loss'] - reference:+.4f} | {r['median_ms_per_iter']:.1f} | "
                     f"{r['bytes_sent_per_step'] or '-'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(runs, indent=2) + "\n")
        Path(args.out + ".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
