"""Shared by the kernel tests: a kernel's results against the reference by the rule of
mini_llm/ops/validation.py, which the bench applies to every row (norm-wise relative error
within the dtype's tolerance, no element far off, right shape and dtype, nothing NaN), and
poisoned output buffers."""

import torch

from mini_llm.ops.validation import TOLERANCE, compare, within

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton runs interpreted


def assert_matches(got, want, tol=None):
    """got, want: a tensor or a sequence of tensors (output, then gradients); `want` computed
    by the reference in float64 (or float32). Each of `got` keeps its own dtype."""
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    assert len(got) == len(want)
    rel, worst, max_abs, problem = compare(got, want, [g.dtype for g in got])
    assert problem is None, problem
    tol = tol or max(TOLERANCE[str(g.dtype).removeprefix("torch.")] for g in got)
    assert within(rel, worst, tol), (
        f"relative error {rel:.2e}, worst element {worst:.2e}, max abs {max_abs:.2e} (tolerance {tol:.0e})")


def poisoned(shape, dtype, device=DEVICE):
    """An output buffer full of NaN: an element the kernel forgets to write fails the check."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)
