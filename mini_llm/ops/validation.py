"""The correctness rule every backend's result is held to, against the reference computed in
float64 on the same inputs: the one rule the tests, the bench (`mini-llm bench`) and the
standalone CUDA programs (csrc/standalone/common.h, checked equal by tests/test_validation.py)
apply.

A result passes when it has the right shape and dtype, is finite, and both its norm-wise
relative error (||out - ref|| / ||ref||) and its worst element (max |out - ref| / max |ref|,
which catches a few wrong rows that a norm would average away) are within its dtype's tolerance.
"""

import math

import torch

TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}  # relative, vs float64
WORST_ELEMENT = 4  # the worst element may be off by this many tolerances of the largest value


def compare(got, want, dtypes):
    """(norm-wise relative error, worst-element error, max abs error, problem or None), the
    worst over the output and the gradients; `dtypes`: the dtype each result must have."""
    rel = worst = max_abs = 0.0
    for g, w, expected_dtype in zip(got, want, dtypes):
        if g.shape != w.shape:
            return math.inf, math.inf, math.inf, f"shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if g.dim() and g.dtype != expected_dtype:  # a scalar loss may be wider than its inputs
            return math.inf, math.inf, math.inf, f"dtype {g.dtype}, expected {expected_dtype}"
        g, w = g.detach().double(), w.detach().double()
        if not torch.isfinite(g).all():
            return math.inf, math.inf, math.inf, "not finite"
        diff = (g - w).abs()
        rel = max(rel, diff.norm().item() / max(w.norm().item(), 1e-30))
        worst = max(worst, diff.max().item() / max(w.abs().max().item(), 1e-30))
        max_abs = max(max_abs, diff.max().item())
    return rel, worst, max_abs, None


def within(rel, worst, tolerance):
    """Whether compare()'s two relative errors pass at `tolerance`."""
    return rel <= tolerance and worst <= WORST_ELEMENT * tolerance
