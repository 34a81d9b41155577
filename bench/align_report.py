"""Collect the stage 5 runs of bench/align_stage5.sh into bench/results/stage5/: summary.json,
summary.md (the tables docs/stage-5-alignment.md cites) and rm_curve.png.

    python bench/align_report.py --work /tmp/align --results bench/results/stage5
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from mini_llm.plot import read_metrics


def evals(run):
    return [r for r in read_metrics(run) if r["kind"] == "eval"]


def summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def rm_curve(work, prefix):
    runs = sorted(work.glob(f"{prefix}-*"), key=lambda p: int(p.name[len(prefix) + 1:]))
    return [{"train_pairs": summary(run)["train_pairs"], "val_pairs": summary(run)["val_pairs"],
             "val_accuracy": evals(run)[-1]["val_accuracy"], "val_loss": evals(run)[-1]["val_loss"],
             "iters": summary(run)["iters"], "batch_size": summary(run)["train_config"]["batch_size"],
             "lr": summary(run)["train_config"]["lr"]} for run in runs if (run / "summary.json").is_file()]


def collect(work, results):
    eval_rows = [json.loads(line) for line in (results / "eval.jsonl").read_text().splitlines()]
    by_stage = {r["stage"]: r for r in eval_rows if r["stage"] in ("base", "sft")}
    sft_evals = evals(work / "sft-char")
    out = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   "2-core CPU shared with other jobs (OMP_NUM_THREADS=1)",
        "sft": {"val_response_loss_before": sft_evals[0]["val_loss"], "val_response_loss_after": sft_evals[-1]["val_loss"],
                "format_rate_base": by_stage["base"]["format_rate"], "format_rate_sft": by_stage["sft"]["format_rate"],
                "iters": summary(work / "sft-char")["iters"]},
        "reward_model_curve": rm_curve(work, "rm"),  # 100 iterations at batch 8, lr 1e-3
        "reward_model_curve_2_epochs": rm_curve(work, "rm2"),  # 2 epochs at batch 16, lr 3e-4
        "dpo": [{"beta": summary(run)["beta"], "seed": summary(run)["train_config"]["seed"],
                 **{k: evals(run)[-1][k] for k in ("val_loss", "val_reward_accuracy", "val_reward_margin")}}
                for run in sorted(work.glob("dpo-b*"))],
        "frontier": [{k: r[k] for k in ("model", "stage", "beta", "train_seed", "gold_reward", "gold_reward_stderr",
                                        "kl", "kl_stderr", "format_rate", "mean_tokens", "samples")}
                     for r in eval_rows],
    }
    for name in ("orca-rm", "orca-dpo", "gsm8k-sft"):
        if (work / name).is_dir():
            e = evals(work / name)
            out[name] = {"first_eval": e[0], "last_eval": e[-1], **{k: summary(work / name).get(k) for k in
                                                                    ("train_pairs", "val_pairs", "train_examples", "val_examples")}}
    return out


def plot_curve(curves, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        ax.plot([c["train_pairs"] for c in curve], [c["val_accuracy"] for c in curve], "o-", label=label)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8, label="chance")
    ax.set(xscale="log", xlabel="training pairs", ylabel="held-out pair accuracy",
           title=f"reward model accuracy on {curve[0]['val_pairs']} held-out pairs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def markdown(s):
    lines = ["# Stage 5 results (made by bench/align_report.py)", "", f"Machine: {s['machine']}.", "",
             "## SFT", "", "| | before (base) | after SFT |", "| --- | --- | --- |",
             f"| response loss, held-out speeches (nats/token) | {s['sft']['val_response_loss_before']:.3f} | "
             f"{s['sft']['val_response_loss_after']:.3f} |",
             f"| answers in the format (one speech, ended by the model) | {s['sft']['format_rate_base']:.0%} | "
             f"{s['sft']['format_rate_sft']:.0%} |", "",
             "## Reward model: held-out accuracy against training pairs", "",
             "| pairs | iterations x batch | lr | accuracy | loss |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['train_pairs']} | {c['iters']} x {c['batch_size']} | {c['lr']:g} | {c['val_accuracy']:.3f} | "
              f"{c['val_loss']:.3f} |" for c in s["reward_model_curve"] + s["reward_model_curve_2_epochs"]]
    lines += ["", "## Reward against KL to the SFT model", "",
              "| model | stage | beta | seed | gold reward | KL (nats) | format |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {Path(r['model']).name} | {r['stage']} | {r['beta'] if r['beta'] is not None else ''} | {r['train_seed']} | "
              f"{r['gold_reward']:+.3f} ± {r['gold_reward_stderr']:.3f} | {r['kl']:.2f} ± {r['kl_stderr']:.2f} | "
              f"{r['format_rate']:.0%} |" for r in s["frontier"]]
    lines += ["", "## DPO, held-out pairs at the end", "", "| beta | seed | loss | implicit-reward accuracy | margin |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {d['beta']} | {d['seed']} | {d['val_loss']:.3f} | {d['val_reward_accuracy']:.3f} | "
              f"{d['val_reward_margin']:.3f} |" for d in s["dpo"]]
    for name in ("orca-rm", "orca-dpo", "gsm8k-sft"):
        if name in s:
            first, last = s[name]["first_eval"], s[name]["last_eval"]
            keys = [k for k in last if k not in ("kind", "iter")]
            lines += ["", f"## {name}", "", "| | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
            lines += [f"| iteration {r['iter']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for r in (first, last)]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    args = p.parse_args()
    s = collect(args.work, args.results)
    (args.results / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (args.results / "summary.md").write_text(markdown(s))
    plot_curve({"100 iterations x 8, lr 1e-3": s["reward_model_curve"],
                "2 epochs, batch 16, lr 3e-4": s["reward_model_curve_2_epochs"]}, args.results / "rm_curve.png")
    print(markdown(s))


if __name__ == "__main__":
    main()
