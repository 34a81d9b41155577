"""The op benchmark: every op x backend x shape x dtype x pass, validated, then timed.

For each case, every backend is first checked against the reference computed in float64 on the
same inputs (outputs, and input gradients for the fwd+bwd pass), then timed; a wrong result is
reported as FAILED and still timed, never hidden, and a kernel that raises is an "error" row.
The check is mini_llm/ops/validation.py's rule, the one the tests apply too (right shape and
dtype, finite, norm-wise relative error and worst element within the dtype's tolerance). Rows
carry the achieved GB/s and TFLOP/s, their share of the device's measured limits, and the
speed-up over the `torch` backend measured in the same run. A backend that cannot run here, or
that has no implementation of an op, is one skipped row with the reason.
"""

import itertools
import math
from dataclasses import dataclass

import torch

from mini_llm import nvtx, ops
from mini_llm.errors import ConfigError
from mini_llm.ops.validation import TOLERANCE, compare, within

from .specs import SPECS, cases
from .timing import median_ms

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PASSES = ("fwd", "fwd+bwd")
REFERENCE_BUDGET = 2 << 30  # bytes a float64 reference may take; beyond, check against torch fp32
TIMED_REFERENCE_BUDGET = 8 << 30  # bytes of T x T matrices the timed reference attention may make
ROTATE_BYTES, MAX_COPIES = 1 << 30, 64  # CPU timing: cycle through this many bytes of inputs


@dataclass
class Row:
    op: str
    backend: str
    shape: str = ""
    dtype: str = ""
    pass_: str = ""
    status: str = "ok"  # ok | FAILED | skipped
    reason: str = ""  # why skipped, or what the check compared against
    rel_err: float = math.nan
    worst_err: float = math.nan  # max |out - ref| / max |ref|
    max_abs_err: float = math.nan
    tolerance: float = math.nan
    ms: float = math.nan
    bytes: int = 0
    flops: int = 0
    gb_s: float = math.nan
    tflop_s: float = math.nan
    pct_bandwidth: float = math.nan
    pct_matmul: float = math.nan
    speedup_vs_torch: float = math.nan


def parse_list(text, known, what):
    """'a,b' -> ['a', 'b'], every name checked against `known`; None (not given): all of them."""
    if text is None:
        return list(known)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"no {what} named in {text!r}; leave the flag out for all of them")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    return names


def _forward_backward(spec, fn, inputs, dims, grad_out):
    out = spec.call(fn, inputs, dims)
    differentiable = [x for x in inputs if x.is_floating_point()]
    return (out, *torch.autograd.grad(out, differentiable, grad_out))


def _score_bytes(spec, dims, element_size):
    """Bytes of the big temporaries the reference makes: the T x T matrices of attention
    (scores, probabilities, their gradient), the cache widened to every query head for decode
    attention; 0 for the other ops."""
    if spec.name == "attention":
        return dims["B"] * dims["nh"] * dims["T"] ** 2 * element_size * 3
    if spec.name == "decode_attention":
        return dims["B"] * dims["nh"] * dims["T"] * dims["hs"] * element_size * 2
    return 0


def check(spec, backend_fn, inputs, dims, pass_, grad_out):
    """compare() of the backend against the reference, and what it was compared with."""
    if _score_bytes(spec, dims, 8) < REFERENCE_BUDGET:
        expected_fn, ref_dtype, against = ops.implementation(spec.name, "reference"), torch.float64, "reference fp64"
    else:  # the float64 reference would not fit in memory: PyTorch's own op in float32
        expected_fn, ref_dtype, against = ops.implementation(spec.name, "torch"), torch.float32, "torch fp32"
    ref_inputs = [x.detach().to(ref_dtype).requires_grad_() if x.is_floating_point() and i not in spec.stored
                  else x for i, x in enumerate(inputs)]
    live = [x.detach().requires_grad_() if x.is_floating_point() else x for x in inputs]
    if pass_ == "fwd":
        with torch.no_grad():
            got, want = [spec.call(backend_fn, live, dims)], [spec.call(expected_fn, ref_inputs, dims)]
    else:
        got = _forward_backward(spec, backend_fn, live, dims, grad_out.to(inputs[0].dtype))
        want = _forward_backward(spec, expected_fn, ref_inputs, dims, grad_out.to(ref_dtype))
    # The output in the inputs' dtype, each gradient in its input's.
    dtypes = [inputs[0].dtype] + [x.dtype for x in inputs if x.is_floating_point()]
    return (*compare(got, want, dtypes), against)


def rotated_copies(inputs, device):
    """Enough copies of the inputs that cycling through them never reads from cache.

    On a GPU do_bench clears the L2 before every run; a CPU's last-level cache can hold
    hundreds of MB (480 MiB on the development machine), so there each timed call gets the
    next of copies adding up to ROTATE_BYTES, and its inputs come from DRAM like a real pass.
    """
    if device.type == "cuda":
        return [list(inputs)]
    size = sum(x.numel() * x.element_size() for x in inputs)
    n = max(1, min(MAX_COPIES, -(-ROTATE_BYTES // size)))
    return [[x.detach().clone() for x in inputs] for _ in range(n)]


def measure(spec, case, backend, dtype_name, pass_, device, limits, generator_seed=0):
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(generator_seed)
    inputs = spec.make(case.dims, dtype, device, g)
    fn = ops.implementation(spec.name, backend)
    with torch.no_grad():
        out_shape = spec.call(fn, inputs, case.dims).shape
    grad_out = torch.randn(out_shape, generator=g).to(device)
    row = Row(spec.name, backend, case.label, dtype_name, pass_, tolerance=TOLERANCE[dtype_name])
    row.rel_err, row.worst_err, row.max_abs_err, problem, against = check(
        spec, fn, inputs, case.dims, pass_, grad_out)
    row.status = "ok" if within(row.rel_err, row.worst_err, row.tolerance) else "FAILED"
    row.reason = f"{problem}; " * bool(problem) + f"vs {against}"

    sets = itertools.cycle(rotated_copies(inputs, device))
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                spec.call(fn, next(sets), case.dims)
    else:
        sets = itertools.cycle([[x.requires_grad_() if x.is_floating_point() else x for x in copy]
                                for copy in rotated_copies(inputs, device)])
        grad = grad_out.to(dtype)

        def step():
            _forward_backward(spec, fn, next(sets), case.dims, grad)

    with nvtx.range(f"bench {spec.name}[{backend}] {case.label} {dtype_name} {pass_}"):
        row.ms = median_ms(step, device)
    backward = pass_ == "fwd+bwd"
    row.bytes = spec.bytes(case.dims, torch.empty((), dtype=dtype).element_size(), backward)
    row.flops = spec.flops(case.dims, backward)
    row.gb_s = row.bytes / row.ms / 1e6
    row.tflop_s = row.flops / row.ms / 1e9
    row.pct_bandwidth = 100 * row.gb_s / limits["copy_gb_s"]
    row.pct_matmul = 100 * row.tflop_s / limits["matmul_tflop_s"]
    return row


def measure_or_report(spec, case, backend, dtype_name, pass_, device, limits):
    """measure(), or a row saying why it could not run: one broken kernel never stops the suite."""
    row = Row(spec.name, backend, case.label, dtype_name, pass_)
    score_bytes = _score_bytes(spec, case.dims, 4)
    if backend == "reference" and score_bytes > TIMED_REFERENCE_BUDGET:
        row.status, row.reason = "skipped", f"the reference would keep {score_bytes / 2**30:.0f} GiB of temporaries"
        return row
    try:
        return measure(spec, case, backend, dtype_name, pass_, device, limits)
    except Exception as e:  # noqa: BLE001 (a kernel's failure is a result to report)
        row.status, row.reason = "error", f"{type(e).__name__}: {e}"[:300]
        return row


def run_ops(op_names, backends, dtypes, shape_set, passes, device, limits, progress=None):
    rows = []
    for op in op_names:
        spec = SPECS[op]
        runnable = []
        for backend in backends:
            if reason := ops.unavailable_reason(backend):
                rows.append(Row(op, backend, status="skipped", reason=reason))
            elif backend not in ops.implemented(op):
                rows.append(Row(op, backend, status="skipped", reason=f"no {backend} implementation of {op} yet"))
            else:
                runnable.append(backend)
        for case in cases(op, shape_set):
            for dtype_name in dtypes:
                for pass_ in _passes(spec, passes):
                    measured = [measure_or_report(spec, case, b, dtype_name, pass_, device, limits)
                                for b in runnable]
                    torch_ms = next((r.ms for r in measured if r.backend == "torch"), math.nan)
                    for r in measured:
                        r.speedup_vs_torch = torch_ms / r.ms
                    rows.extend(measured)
                    if progress:
                        progress()
    return rows


def _passes(spec, passes):
    return passes if spec.differentiable else [p for p in passes if p == "fwd"]


def count_steps(op_names, shape_set, dtypes, passes):
    return sum(len(cases(op, shape_set)) * len(_passes(SPECS[op], passes)) for op in op_names) * len(dtypes)
