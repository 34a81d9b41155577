"""Loss curves from one or more run folders' metrics.jsonl, as a PNG."""

import io
import json
from pathlib import Path

from .errors import ConfigError, DataError
from .files import atomic_write_bytes


def read_metrics(run_dir):
    """The records of run_dir/metrics.jsonl ([] if there is none yet). A torn last line (the
    run was killed mid-write) is dropped; damage anywhere else is an error."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise DataError(f"{path}, line {i + 1}, is not a JSON record") from None
    return records


def plot_runs(run_dirs, out_png):
    """Training loss (thin) and validation loss (markers) per run, on shared axes."""
    import matplotlib  # here, not on top: it takes ~0.7 s to import and only a plot needs it

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    runs = {run_dir: read_metrics(run_dir) for run_dir in run_dirs}
    empty = [str(run_dir) for run_dir, records in runs.items() if not records]
    if empty:
        raise DataError(f"no metrics.jsonl to plot in {', '.join(empty)}")
    if Path(out_png).suffix.lower() != ".png":
        raise ConfigError(f"{out_png}: the plot is a PNG; give a path ending in .png")
    fig, ax = plt.subplots(figsize=(8, 5))
    for run_dir, records in runs.items():
        name = Path(run_dir).name
        steps = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval" and "val_loss" in r]  # RL runs evaluate rewards
        line, = ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6,
                        label=f"{name} train (batch)")
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-",
                color=line.get_color(), label=f"{name} val")
    ax.set(xlabel="iteration", ylabel="cross-entropy loss (nats/token)", title="loss curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out_png, png.getvalue())
