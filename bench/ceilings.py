"""The device's limits, measured rather than copied from a datasheet, and cached per device.

  copy bandwidth: a large device-to-device copy, counting bytes read plus bytes written;
  matmul rate:    a large square matmul, bf16 on a GPU (tensor cores), float32 on a CPU.

Each is also timed the plain way (a synchronised wall-clock loop) and both figures are kept, so
a reader can see the suite's timer agrees with what a hand measurement gives.

Ceilings measured while the machine was busy are too low, and every later row would be judged
against them (MFU over 100%, points above the roofline). So each measurement records when it was
taken and the load average then (and warns when the machine was busy), and each later run
re-checks the cached figures with a quick plain-loop measurement: more than DRIFT apart, they
are measured again.
"""

import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

import torch

from mini_llm.files import atomic_write_bytes, cache_dir

from .timing import median_ms, plain_ms

DRIFT = 0.3  # a quick check this far (relative) from the cached ceilings re-measures them
BUSY_LOAD_PER_CORE = 0.5  # a 1-minute load average above this per core: not an idle machine


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    model = platform.processor() or "cpu"
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    return f"{model} ({torch.get_num_threads()} threads)"


def workloads(device):
    """(copy, matmul, GB/s of a time in ms, TFLOP/s of a time in ms, the matmul's name)."""
    n_bytes = 1 << 30  # larger than any cache: a CPU's last level can hold hundreds of MB
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: dst.copy_(src), lambda: torch.matmul(a, b),
            lambda ms: 2 * n_bytes / ms / 1e6,  # read + write
            lambda ms: 2 * n**3 / ms / 1e9, f"{n}x{n}x{n} {str(dtype).removeprefix('torch.')}")


def load_now():
    """The 1-minute load average per core (None where the OS does not say)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return None


def measure(device):
    load = load_now()
    if load is not None and load > BUSY_LOAD_PER_CORE:
        print(f"warning: measuring the ceilings on a busy machine (load {load:.2f} per core): they "
              "will come out low and every row's share of them high; rerun with "
              "--remeasure-ceilings when it is idle", file=sys.stderr)
    copy, matmul, gb_s, tflop_s, matmul_name = workloads(device)
    return {
        "device": device_name(device), "torch": torch.__version__,
        "measured": datetime.datetime.now().isoformat(timespec="seconds"), "load_per_core": load,
        "copy_bytes": 1 << 30, "copy_gb_s": gb_s(median_ms(copy, device)),
        "copy_gb_s_plain": gb_s(plain_ms(copy, device)),
        "matmul": matmul_name,
        "matmul_tflop_s": tflop_s(median_ms(matmul, device)),
        "matmul_tflop_s_plain": tflop_s(plain_ms(matmul, device)),
    }


def drift(limits, device):
    """How far a quick plain-loop measurement is from the cached plain-loop figures: the worse
    of the two relative differences (infinite for a cache without them)."""
    copy, matmul, gb_s, tflop_s, _ = workloads(device)
    now = {"copy_gb_s_plain": gb_s(plain_ms(copy, device, repeats=3)),
           "matmul_tflop_s_plain": tflop_s(plain_ms(matmul, device, repeats=3))}
    return max(abs(now[k] / limits[k] - 1) if limits.get(k) else math.inf for k in now)


def ceilings(device, remeasure=False, check=True):
    """Measured limits of `device`: from the cache if a quick check agrees with it (or check is
    False: for a calculation that must not take seconds), else (and with remeasure, or never
    measured) measured now and cached."""
    path = cache_dir() / "ceilings.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{device_name(device)} | torch {torch.__version__}"
    if not remeasure and key in cached:
        if not check:
            return cached[key]
        off = drift(cached[key], device)
        if off <= DRIFT:
            return cached[key]
        print(f"warning: the cached ceilings ({describe(cached[key])}) are {100 * off:.0f}% off a "
              "quick measurement now: measuring them again", file=sys.stderr)
    cached[key] = measure(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(cached, indent=2).encode())
    return cached[key]


def describe(limits):
    """When and under what load the ceilings were measured (caches from before this say so)."""
    load = limits.get("load_per_core")
    return (f"measured {limits.get('measured', 'at an unrecorded time')}, load "
            f"{'unrecorded' if load is None else f'{load:.2f} per core'}")


def over_ceiling(rows, e2e):
    """The rows above 100% of a ceiling: a sign the ceilings were measured low."""
    over = [f"{r.op} {r.backend} {r.pass_} {r.shape} ({pct:.0f}%)" for r in rows
            for pct in (r.pct_bandwidth, r.pct_matmul) if pct > 100]  # NaN (not measured): False
    return over + [f"{r['what']} {r['kernels']} ({r['value']:.0f}%)" for r in e2e
                   if r["unit"] == "%" and r["value"] > 100]
