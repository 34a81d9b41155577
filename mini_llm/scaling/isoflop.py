"""Approach 2 of Hoffmann et al. (2022): isoFLOP profiles.

Runs that spent the same compute C (within a relative tolerance) form one budget. Within a
budget the loss against log N is close to a parabola near its minimum; the parabola's vertex is
that budget's compute-optimal size N_opt(C). Across budgets, N_opt and D_opt follow power laws

    N_opt = k_N C^a,    D_opt = k_D C^b,

fitted as straight lines in log-log. D_opt is read off the budget's own runs (log D against
log N is a line within a budget: D = C / flops-per-token), so a table whose flops count the
attention term as well as 6ND gets its own D_opt, not C / (6 N_opt). With C = 6ND exactly,
a + b = 1.
"""

from dataclasses import dataclass, field

import numpy as np

from ..errors import FitError

MIN_SIZES = 3  # a parabola through fewer points is not a fit
MIN_BUDGETS = 2  # a line through fewer points neither


@dataclass
class Budget:
    C: float  # the budget's compute: the geometric mean of its runs' flops
    index: np.ndarray  # positions of its runs in the table
    parabola: np.ndarray = None  # loss = p[0] x^2 + p[1] x + p[2], x = log N
    N_opt: float = None
    D_opt: float = None
    L_opt: float = None
    skipped: str = None  # why this budget gave no N_opt


@dataclass
class IsoFLOPFit:
    budgets: list
    a: float  # N_opt = k_N C^a
    k_N: float
    b: float  # D_opt = k_D C^b
    k_D: float
    notes: list = field(default_factory=list)

    def used(self):
        return [bud for bud in self.budgets if bud.skipped is None]


def group_budgets(C, rel_tol=0.05):
    """Runs whose flops are within rel_tol of the smallest in their group share a budget."""
    order = np.argsort(C)
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or C[order[i]] > C[order[start]] * (1 + rel_tol):
            index = np.sort(order[start:i])
            groups.append(Budget(C=float(np.exp(np.log(C[index]).mean())), index=index))
            start = i
    return groups


def _fit_budget(bud, N, D, L):
    x = np.log(N[bud.index])
    if len(np.unique(x)) < MIN_SIZES:
        bud.skipped = f"{len(np.unique(x))} model size(s), a parabola needs {MIN_SIZES}"
        return
    bud.parabola = np.polyfit(x, L[bud.index], 2)
    p2, p1, p0 = bud.parabola
    if p2 <= 0:
        bud.skipped = "the loss is not convex in log N here (no minimum)"
        return
    x_opt = -p1 / (2 * p2)
    bud.N_opt, bud.L_opt = float(np.exp(x_opt)), float(np.polyval(bud.parabola, x_opt))
    bud.D_opt = float(np.exp(np.polyval(np.polyfit(x, np.log(D[bud.index]), 1), x_opt)))
    if not x.min() <= x_opt <= x.max():
        bud.skipped = (f"its minimum (N = {bud.N_opt:.3g}) is outside the sizes it tried: "
                       "widen the sweep there")


def fit_isoflop(N, D, C, L, rel_tol=0.05):
    """Fit approach 2 to runs (arrays). Raises FitError, naming why, when fewer than
    MIN_BUDGETS budgets have a usable minimum."""
    budgets = group_budgets(C, rel_tol)
    for bud in budgets:
        _fit_budget(bud, N, D, L)
    notes = [f"budget C = {bud.C:.3g} ({len(bud.index)} runs) skipped: {bud.skipped}"
             for bud in budgets if bud.skipped]
    used = [bud for bud in budgets if bud.skipped is None]
    if len(used) < MIN_BUDGETS:
        raise FitError(f"approach 2 needs {MIN_BUDGETS} or more compute budgets with {MIN_SIZES}+ "
                       f"model sizes and a minimum inside them; found {len(used)} of "
                       f"{len(budgets)}" + (f" ({'; '.join(notes)})" if notes else ""))
    logC = np.log([bud.C for bud in used])
    a, log_kN = np.polyfit(logC, np.log([bud.N_opt for bud in used]), 1)
    b, log_kD = np.polyfit(logC, np.log([bud.D_opt for bud in used]), 1)
    return IsoFLOPFit(budgets, float(a), float(np.exp(log_kN)), float(b), float(np.exp(log_kD)),
                      notes)
