"""The scaling fit's figures, each returned as PNG bytes (fit.py writes them when all are made).

Built on matplotlib's Figure, not pyplot: no global state and no display needed (Agg)."""

import io

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _png(fig):
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _colors(n):
    return matplotlib.colormaps["viridis"](np.linspace(0, 0.9, n))


def isoflop_png(runs, iso):
    """Loss against N per budget: the runs, the parabola, its minimum."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    colors = _colors(len(iso.budgets))
    for bud, color in zip(iso.budgets, colors):
        N, L = runs.N[bud.index], runs.L[bud.index]
        ax.scatter(N, L, color=color, s=18, label=f"C = {bud.C:.2g}")
        if bud.parabola is not None:
            x = np.linspace(np.log(N.min()), np.log(N.max()), 100)
            ax.plot(np.exp(x), np.polyval(bud.parabola, x), color=color, lw=1,
                    ls="-" if bud.skipped is None else ":")
        if bud.skipped is None:
            ax.scatter([bud.N_opt], [bud.L_opt], marker="*", s=140, color=color, edgecolor="k",
                       zorder=3)
    ax.set(xscale="log", xlabel=f"parameters N ({runs.params_column})", ylabel="loss",
           title="isoFLOP profiles (approach 2); stars: each budget's minimum")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def n_opt_png(iso, law):
    """N_opt against C: the budgets' minima, approach 2's power law, approach 3's optimum."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    used = iso.used()
    C = np.array([bud.C for bud in used])
    ax.scatter(C, [bud.N_opt for bud in used], color="k", zorder=3, label="budget minima")
    span = np.geomspace(C.min() / 3, C.max() * 3, 50)
    ax.plot(span, iso.k_N * span**iso.a, label=f"approach 2: N_opt ~ C^{iso.a:.3f}")
    if law is not None:
        ax.plot(span, law.n_opt(span), ls="--",
                label=f"approach 3: N_opt ~ C^{law.n_opt_exponent():.3f} (C = 6ND)")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="compute-optimal N",
           title="compute-optimal model size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def contours_png(runs, law):
    """Contours of approach 3's L(N, D), the runs coloured by their measured loss, and the
    compute-optimal frontier (N_opt(C), D = C / (6 N_opt))."""
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot()
    logN = np.linspace(np.log(runs.N.min() / 3), np.log(runs.N.max() * 3), 120)
    logD = np.linspace(np.log(runs.D.min() / 3), np.log(runs.D.max() * 3), 120)
    N, D = np.meshgrid(np.exp(logN), np.exp(logD))
    levels = np.quantile(law.loss(N, D), np.linspace(0.02, 0.98, 12))
    contours = ax.contour(N, D, law.loss(N, D), levels=np.unique(levels), colors="0.5",
                          linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    dots = ax.scatter(runs.N, runs.D, c=runs.L, cmap="viridis", s=22, edgecolor="k", lw=0.3,
                      zorder=3)
    fig.colorbar(dots, ax=ax, label="measured loss")
    C = np.geomspace((6 * runs.N * runs.D).min(), (6 * runs.N * runs.D).max(), 50)
    ax.plot(law.n_opt(C), C / (6 * law.n_opt(C)), color="C3", label="compute-optimal (approach 3)")
    ax.set(xscale="log", yscale="log", xlabel=f"parameters N ({runs.params_column})",
           ylabel="tokens D", xlim=(N.min(), N.max()), ylim=(D.min(), D.max()),
           title=f"L(N, D) = {law.E:.3g} + {law.A:.3g}/N^{law.alpha:.3f} + "
                 f"{law.B:.3g}/D^{law.beta:.3f}")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)
