"""The same training run with each kernel set: the loss must not depend on the kernels, the
time may. Meant for a GPU (the issue's check: shakespeare-char, 5000 iterations, the val loss of
`--kernels triton` and `--kernels cuda` within 0.01 of the reference backend's).

    python -m mini_llm.bench.train_kernel_sets [--preset shakespeare-char] [--kernels reference,triton,cuda]

The runs go one after another (never sharing the device), each into out/kernel_sets/<kernels>;
every setting but --kernels is the preset's. Writes train_kernel_sets_<preset>.{json,md} into --results:
final val loss, its difference from the first kernel set's, median ms/iteration, tokens/s.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from . import script


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="shakespeare-char")
    p.add_argument("--kernels", default="reference,triton,cuda", help="kernel sets; the first is the baseline")
    p.add_argument("--out", default="out/kernel_sets", help="parent folder of the run folders")
    p.add_argument("--results", default=script.DEFAULT_OUT, help="folder for the results (default: "
                   f"{script.DEFAULT_OUT}; the committed ones are in bench/results)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more `mini-llm train` flags, after --")
    args = p.parse_args(argv)
    script.check_out(args.results)

    rows, failed = [], []
    for kernels in args.kernels.split(","):
        run = Path(args.out) / kernels.replace("=", "-").replace(",", "_")
        cmd = [sys.executable, "-m", "mini_llm.cli", "train", "--preset", args.preset, "--kernels", kernels, "--out", str(run),
               "--sample-tokens", "0", *[a for a in args.extra if a != "--"]]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:  # the next kernel set still runs
            failed.append(kernels)
            continue
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"kernels": kernels, "val_loss": summary["val_loss"], "iters": summary["iters"],
                     "median_ms_per_iter": summary["median_ms_per_iter"], "tokens_per_s": summary["tokens_per_s"],
                     "device": summary["device"], "dtype": summary["dtype"], "command": " ".join(cmd)})
        write(rows, Path(args.results), args.preset)  # after each run: a run cut short keeps the others
    if failed:
        sys.exit(f"training with --kernels {', '.join(failed)} failed; see above")


def write(rows, out, preset):
    """results/train_kernel_sets_<preset>.{json,md}: the rows, each against the first."""
    for r in rows:
        r["val_loss_diff"] = r["val_loss"] - rows[0]["val_loss"]
    name = f"train_kernel_sets_{preset}"
    lines = [f"# {preset}: one training run per kernel set", "",
             "| kernels | iterations | val loss | vs first | ms/iter (median) | tokens/s | device |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['kernels']} | {r['iters']} | {r['val_loss']:.4f} | {r['val_loss_diff']:+.4f} | "
              f"{r['median_ms_per_iter']:.1f} | {r['tokens_per_s']:,.0f} | {r['device']} ({r['dtype']}) |" for r in rows]
    script.write_results(out, {f"{name}.json": json.dumps(rows, indent=1), f"{name}.md": "\n".join(lines) + "\n"})
    print("\n".join(lines))

if __name__ == "__main__":
    sys.exit(script.run(main))
