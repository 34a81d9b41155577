"""The device's limits, measured rather than copied from a datasheet, and cached per device.

  copy bandwidth: a large device-to-device copy, counting bytes read plus bytes written;
  matmul rate:    a large square matmul, bf16 on a GPU (tensor cores), float32 on a CPU.

Each is also timed the plain way (a synchronised wall-clock loop) and both figures are kept, so
a reader can see the suite's timer agrees with what a hand measurement gives.
"""

import json
import platform
from pathlib import Path

import torch

from mini_llm.files import atomic_write_bytes, cache_dir

from .timing import median_ms, plain_ms


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    model = platform.processor() or "cpu"
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    return f"{model} ({torch.get_num_threads()} threads)"


def measure(device):
    gpu = device.type == "cuda"
    n_bytes = 1 << 30  # larger than any cache: a CPU's last level can hold hundreds of MB
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    n, dtype = (8192, torch.bfloat16) if gpu else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul = lambda: torch.matmul(a, b)  # noqa: E731
    gb_s = lambda ms: 2 * n_bytes / ms / 1e6  # noqa: E731  read + write
    tflop_s = lambda ms: 2 * n**3 / ms / 1e9  # noqa: E731
    return {
        "device": device_name(device), "torch": torch.__version__,
        "copy_bytes": n_bytes, "copy_gb_s": gb_s(median_ms(copy, device)),
        "copy_gb_s_plain": gb_s(plain_ms(copy, device)),
        "matmul": f"{n}x{n}x{n} {str(dtype).removeprefix('torch.')}",
        "matmul_tflop_s": tflop_s(median_ms(matmul, device)),
        "matmul_tflop_s_plain": tflop_s(plain_ms(matmul, device)),
    }


def ceilings(device, remeasure=False):
    """Measured limits of `device`, from the cache unless remeasure or never measured."""
    path = cache_dir() / "ceilings.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{device_name(device)} | torch {torch.__version__}"
    if remeasure or key not in cached:
        cached[key] = measure(device)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(cached, indent=2).encode())
    return cached[key]
