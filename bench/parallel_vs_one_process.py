"""A parallel run of `shakespeare-char-cpu` beside one process: the validation loss at every
evaluation, read from the runs' own files (summary.json, metrics.jsonl).

    OMP_NUM_THREADS=1 mini-llm train --preset shakespeare-char-cpu --device cpu --split-batch 2 --out A
    mini-llm train --preset shakespeare-char-cpu --device cpu --out B --nproc-per-node 2 --parallel ddp
    mini-llm train --preset shakespeare-char-cpu --device cpu --out C --nproc-per-node 2 --parallel fsdp
    OMP_NUM_THREADS=1 mini-llm train --preset shakespeare-char-cpu --device cpu --out D
    python bench/parallel_vs_one_process.py A B C D --out bench/results/parallel_vs_one_process_cpu

The first run is the reference. One process with --split-batch 2 runs each batch as the two
ranks' slices and is equal to the 2-rank runs to the bit; one process without it sums the
whole batch in one matmul, another rounding, which grows over hundreds of steps into
differences far smaller than the spread between two seeds.
"""

import argparse
import json
from pathlib import Path

from mini_llm.checkpoint import load_checkpoint
from mini_llm.plot import read_metrics


def describe(summary):
    cfg = summary["train_config"]
    ranks = summary.get("ranks", 1)
    split = cfg.get("split_batch", 1)
    how = f"{cfg['parallel']}, {ranks} ranks" if cfg.get("parallel") else \
        "one process" + (f", --split-batch {split}" if split > 1 else "")
    return f"{how}, {summary['device']}"


def parameters_vs(folder, reference):
    """Whether the final weights equal the reference run's to the bit, else their largest gap."""
    ours, theirs = (load_checkpoint(f).model_state for f in (folder, reference))
    gap = max(float((ours[k] - v).abs().max()) for k, v in theirs.items())
    return "equal to the bit" if gap == 0 else f"{gap:.2g} apart"


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
                     "bytes_sent_per_step": bytes_sent[-1] if bytes_sent else None,
                     "final_weights": parameters_vs(folder, args.runs[0])})
    iters = sorted(runs[0]["val_loss"])
    lines = [f"shakespeare-char-cpu, {iters[-1]} iterations, global batch 12, on the 2-core CPU "
             "(the ranks share the 2 cores, one thread each); validation loss at each evaluation", "",
             "| run | " + " | ".join(f"iter {i}" for i in iters)
             + " | final, all digits | final - reference | final weights vs reference | ms/iter | bytes sent per step |",
             "|---|" + "---|" * (len(iters) + 5)]
    reference = runs[0]["final_val_loss"]
    for r in runs:
        lines.append(f"| {r['run']} | " + " | ".join(f"{r['val_loss'][i]:.4f}" for i in iters)
                     + f" | {r['final_val_loss']!r} | {r['final_val_loss'] - reference:+.2g} | {r['final_weights']} | "
                     f"{r['median_ms_per_iter']:.1f} | {r['bytes_sent_per_step'] or '-'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(runs, indent=2) + "\n")
        Path(args.out + ".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
