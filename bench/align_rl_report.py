"""Collect bench/align_rl.sh's runs into bench/results/stage5_rl/: the over-optimisation curves
with Gao et al.'s fitted forms, the matched-KL table, and pass@1 before and after GRPO.

    python bench/align_rl_report.py --work /tmp/rl --align /tmp/align --out bench/results/stage5_rl

Over-optimisation (Gao, Schulman & Hilton 2022): with d = sqrt(KL to the SFT policy) and rewards
measured from the SFT policy's own (R(0) = 0), best-of-n follows R(d) = d (alpha - beta d) and
RL follows R(d) = d (alpha - beta log d). Each form is fitted to the gold and the proxy reward
of each method by least squares; the gold reward's fitted peak is at d = alpha / (2 beta)
(best-of-n) and d = exp(alpha / beta - 1) (RL).
"""

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit
from scipy.stats import t as student_t

FORMS = {"bon": lambda d, a, b: d * (a - b * d),
         "rl": lambda d, a, b: d * (a - b * np.log(np.maximum(d, 1e-9)))}
PEAK = {"bon": lambda a, b: a / (2 * b) if b > 0 else math.inf,
        "rl": lambda a, b: math.exp(a / b - 1) if b > 0 else math.inf}
KL_TARGETS = (0.5, 1.0, 2.0, 4.0, 6.0)
WEAK = "RM of 400 pairs"


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def bon_curve(path):
    rows = json.loads(Path(path).read_text())["best_of_n"]
    return [{"kl": r["kl"], "reward": r["reward"], "gold_reward": r["gold_reward"], "n": r["n"]} for r in rows]


def rl_curve(run):
    return [{"kl": max(r["kl"], 0.0), "reward": r["reward"], "gold_reward": r["gold_reward"], "iter": r["iter"]}
            for r in read_jsonl(Path(run) / "metrics.jsonl") if r["kind"] == "eval"]


def fit(curve, form, key):
    """alpha, beta of the form on (sqrt(KL), reward - reward at the start), and the peak."""
    d = np.sqrt([p["kl"] for p in curve])
    y = np.array([p[key] for p in curve]) - curve[0][key]
    (a, b), _ = curve_fit(FORMS[form], d, y, p0=(1.0, 0.1), maxfev=20000)
    peak_d = PEAK[form](a, b)
    return {"alpha": float(a), "beta": float(b), "peak_d": peak_d, "peak_kl": peak_d ** 2,
            "rmse": float(np.sqrt(np.mean((FORMS[form](d, a, b) - y) ** 2))),
            "best_measured": max(curve, key=lambda p: p[key])}


def at_kl(curve, kl):
    """Gold reward interpolated along a curve sorted by KL; None outside its range."""
    pts = sorted(curve, key=lambda p: p["kl"])
    if not pts or not pts[0]["kl"] <= kl <= pts[-1]["kl"]:
        return None
    return float(np.interp(kl, [p["kl"] for p in pts], [p["gold_reward"] for p in pts]))


# DPO's path in KL: part 1's run (beta 0.2, 800 pairs, seed 1, 100 steps) and the same run stopped early
DPO_SERIES = ("dpo-b0.2-it5", "dpo-b0.2-it10", "dpo-b0.2-it20", "dpo-b0.2-it40", "dpo-b0.2-s1")


def dpo_curve(records):
    """DPO_SERIES's points, from `align eval` records."""
    by_name = {Path(r["model"]).name: r for r in records}
    return [{"model": name, "kl": max(by_name[name]["kl"], 0.0), "gold_reward": by_name[name]["gold_reward"]}
            for name in DPO_SERIES if name in by_name]


def pass_at_1(path):
    """pass@1 at temperature 1 (the mean over the evaluation seeds, and each with its 95% CI
    over prompts) and greedy accuracy, from a `mini-llm align passk` file."""
    records = read_jsonl(path)
    sampled = [r for r in records if r["temperature"] == 1.0]
    greedy = next(r for r in records if r["temperature"] == 0.0)
    return {"pass_at_1": statistics.mean(r["pass_at_1"] for r in sampled), "greedy": greedy["pass_at_1"],
            "per_seed": [(r["seed"], r["pass_at_1"], r["ci95"]) for r in sampled]}


def mean_ci(values):
    m = statistics.mean(values)
    if len(values) < 2:
        return m, (math.nan, math.nan)
    half = student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, (m - half, m + half)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    return plt


def save(plt, fig, out_png):
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot(curves, fits, out_png):
    plt = pyplot()
    rows = math.ceil(len(curves) / 3)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    for ax, (name, (form, curve)) in zip(axes.flat, curves.items()):
        d = np.sqrt([p["kl"] for p in curve])
        grid = np.linspace(1e-3, d.max() * 1.1, 200)
        for key, color in (("gold_reward", "C0"), ("reward", "C1")):
            y = np.array([p[key] for p in curve]) - curve[0][key]
            f = fits[name][key]
            ax.plot(d, y, "o", color=color, label=f"{'gold' if key == 'gold_reward' else 'proxy'} (measured)")
            ax.plot(grid, FORMS[form](grid, f["alpha"], f["beta"]), "-", color=color, alpha=0.7,
                    label=f"fit: alpha {f['alpha']:.2f}, beta {f['beta']:.2f}")
        ax.set(title=name, xlabel="d = sqrt(KL to SFT), sqrt(nats)", ylabel="reward - SFT's reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(plt, fig, out_png)


def plot_gold_vs_kl(curves, out_png):
    """Every method's gold reward against KL on one axis: the matched-KL comparison as a picture."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, curve in curves.items():
        pts = sorted(curve, key=lambda p: p["kl"])
        ax.plot([p["kl"] for p in pts], [p["gold_reward"] for p in pts], "o-", label=name, alpha=0.8)
    ax.set(xlabel="KL(policy || SFT), nats per answer", ylabel="gold reward (VADER), mean",
           title="gold reward against KL: best-of-n, PPO, GRPO (proxy reward), DPO")
    ax.grid(alpha=0.3)
    ax.legend()
    save(plt, fig, out_png)


def plot_addition(runs, out_png):
    """The held-out reward (= pass@1, one eval seed) at each evaluation of each GRPO seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
        ax.plot([r["iter"] for r in evals], [r["reward"] for r in evals], "o-", label=run.name)
    ax.set(xlabel="GRPO step", ylabel="pass@1 on 200 held-out problems", title="GRPO on 3-digit addition")
    ax.grid(alpha=0.3)
    ax.legend()
    save(plt, fig, out_png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/rl")
    ap.add_argument("--align", default="/tmp/align")
    ap.add_argument("--out", default="bench/results/stage5_rl")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    curves = {"best-of-n": ("bon", bon_curve(out / "best_of_n.json")),
              "PPO": ("rl", rl_curve(work / "ppo-proxy")), "GRPO": ("rl", rl_curve(work / "grpo-proxy"))}
    if (out / "best_of_n_rm400.json").is_file():  # the weaker proxy (align_rl.sh weak)
        curves[f"best-of-n, {WEAK}"] = ("bon", bon_curve(out / "best_of_n_rm400.json"))
    if (work / "grpo-rm400" / "metrics.jsonl").is_file():
        curves[f"GRPO, {WEAK}"] = ("rl", rl_curve(work / "grpo-rm400"))
    fits = {name: {key: fit(curve, form, key) for key in ("gold_reward", "reward")}
            for name, (form, curve) in curves.items()}
    plot(curves, fits, out / "overoptimization.png")
    evals = read_jsonl(Path("bench/results/stage5/eval.jsonl")) + read_jsonl(out / "eval.jsonl")
    matched = {name: [at_kl(curve, kl) for kl in KL_TARGETS] for name, (_, curve) in curves.items()}
    matched["DPO"] = [at_kl(dpo_curve(evals), kl) for kl in KL_TARGETS]
    plot_gold_vs_kl({**{k: c for k, (_, c) in curves.items()}, "DPO (beta 0.2, stopped early)": dpo_curve(evals)},
                    out / "gold_vs_kl.png")
    adds = {}
    if (work / "add-sft.passk.jsonl").is_file():
        adds["SFT"] = pass_at_1(work / "add-sft.passk.jsonl")
        for path in sorted(work.glob("add-grpo-s*.passk.jsonl")):
            adds[path.name.split(".")[0]] = pass_at_1(path)
    summary = {"fits": fits, "kl_targets": KL_TARGETS, "gold_at_kl": matched, "final_models": evals,
               "addition": adds, "curves": {k: c for k, (_, c) in curves.items()}}
    if len(adds) > 1:
        plot_addition(sorted(p for p in work.glob("add-grpo-s*") if p.is_dir()), out / "addition.png")
        summary["addition_grpo_mean"] = mean_ci([v["pass_at_1"] for k, v in adds.items() if k != "SFT"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))


def cell(x, fmt="{:+.3f}"):
    return "—" if x is None else fmt.format(x)


def markdown(s):
    lines = ["## Over-optimisation: Gao et al.'s forms fitted (rewards minus the SFT policy's)", "",
             "| method | reward | alpha | beta | fitted peak d (KL) | rmse | best measured (KL, reward) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, by_key in s["fits"].items():
        for key, f in by_key.items():
            b = f["best_measured"]
            reach = 3 * math.sqrt(max(p["kl"] for p in s["curves"][name]))
            peak = ("none: beta <= 0, still rising" if f["beta"] <= 0 else
                    f"beyond d = {reach:.1f}, 3x the largest measured" if f["peak_d"] > reach else
                    f"{f['peak_d']:.2f} ({f['peak_kl']:.1f})")
            lines.append(f"| {name} | {'gold' if key == 'gold_reward' else 'proxy'} | {f['alpha']:.3f} | "
                         f"{f['beta']:.3f} | {peak} | {f['rmse']:.3f} | {b['kl']:.2f}, {b[key]:+.3f} |")
    lines += ["", "## Gold reward at matched KL (nats per answer; interpolated along each method's curve)", "",
              "| method | " + " | ".join(f"KL {k}" for k in s["kl_targets"]) + " |",
              "| --- |" + " --- |" * len(s["kl_targets"])]
    lines += [f"| {name} | " + " | ".join(cell(v) for v in vals) + " |" for name, vals in s["gold_at_kl"].items()]
    lines += ["", "## Final models, measured alike (`mini-llm align eval`, seed 7, 24 prompts x 8 answers)", "",
              "| model | stage | beta | gold reward | KL (nats) |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {Path(r['model']).name} | {r['stage']} | {r.get('beta') or ''} | {r['gold_reward']:+.3f} "
              f"± {r['gold_reward_stderr']:.3f} | {r['kl']:.2f} ± {r['kl_stderr']:.2f} |" for r in s["final_models"]]
    if s["addition"]:
        lines += ["", "## Addition: pass@1 on 200 held-out problems x 4 answers, temperature 1", "",
                  "| model | pass@1 (mean of 3 eval seeds) | per eval seed [95% CI over prompts] | greedy |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['pass_at_1']:.3f} | " + "; ".join(f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for _, p, (lo, hi)
                                                              in v["per_seed"]) + f" | {v['greedy']:.3f} |"
                  for k, v in s["addition"].items()]
        if "addition_grpo_mean" in s:
            m, (lo, hi) = s["addition_grpo_mean"]
            lines += ["", f"GRPO over the 3 training seeds: pass@1 {m:.3f}, 95% t-interval [{lo:.3f}, {hi:.3f}]; "
                      f"SFT: {s['addition']['SFT']['pass_at_1']:.3f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
