"""quant_matmul against what a user would otherwise run: torch.matmul with a bf16 weight.

    python -m mini_llm.bench.quant_vs_bf16 [--backends triton,cuda] [--out DIR]

The issue's targets: at M = 1..16 tokens and K = N = 4096 / 8192, int8 >= 1.6x and int4 >= 2.5x
faster than the bf16 matmul, and no worse than 0.6x of it at M = 2048. (The bench suite's
quant_matmul rows compare with the `torch` backend instead, which dequantizes on every call.)
Each kernel's result is first checked against the reference in float64 (the bench suite's
rule); then every row is timed in the same run, on a GPU, with triton.testing.do_bench.
Writes quant_vs_bf16_<device>.{json,md} into --out (bench/script.py).
"""

import argparse
import json
import sys

import torch

from mini_llm import ops
from mini_llm.ops.quant_format import quantize
from mini_llm.ops.validation import TOLERANCE, compare, within

from . import script
from .suite import _versions
from .timing import median_ms

FORMATS = ((8, None), (4, 64), (4, 128))
TOKENS = (1, 2, 4, 8, 16, 2048)


def label(bits, group):
    return f"int{bits} g{group}" if bits == 4 else f"int{bits}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="triton,cuda")
    p.add_argument("--sizes", default="4096,8192", help="K = N")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="M, rows of activations")
    script.add_out_flag(p)
    args = p.parse_args(argv)
    out = script.check_out(args.out)
    # On a CPU (Triton interpreted) it only checks that the script runs: the times mean nothing.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = [b for b in args.backends.split(",") if ops.unavailable_reason(b) is None]
    g = torch.Generator().manual_seed(0)
    rows = []
    for K in map(int, args.sizes.split(",")):
        w = torch.randn(K, K, generator=g) * 0.02
        w_bf16 = w.to(device, torch.bfloat16)
        for bits, group in FORMATS:
            qweight, scales = (t.to(device) for t in quantize(w, bits, group))
            group = group or K
            for M in map(int, args.tokens.split(",")):
                x = torch.randn(M, K, generator=g).to(device, torch.bfloat16)
                want = ops.implementation("quant_matmul", "reference")(x.double(), qweight, scales, group)
                bf16_ms = median_ms(lambda: torch.matmul(x, w_bf16.T), device)
                for backend in backends:
                    fn = ops.implementation("quant_matmul", backend)
                    rel, worst, _, problem = compare([fn(x, qweight, scales, group)], [want], [x.dtype])
                    ok = problem is None and within(rel, worst, TOLERANCE["bfloat16"])
                    ms = median_ms(lambda: fn(x, qweight, scales, group), device)
                    rows.append({"backend": backend, "M": M, "K": K, "N": K, "bits": bits, "group": group,
                                 "status": "ok" if ok else f"FAILED {problem or f'rel {rel:.1e}'}",
                                 "ms": ms, "bf16_ms": bf16_ms, "speedup_vs_bf16": bf16_ms / ms})
                    r = rows[-1]
                    print(f"{backend:>6} M{M:<5} K=N={K} {label(bits, group):<9} "
                          f"{ms * 1e3:8.1f} us vs bf16 {bf16_ms * 1e3:8.1f} us: {r['speedup_vs_bf16']:.2f}x {r['status']}")
    meta = {**_versions(), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    name = f"quant_vs_bf16_{'gpu' if device.type == 'cuda' else 'cpu'}"
    lines = [f"# quant_matmul vs bf16 torch.matmul, {meta['device']}", "",
             "bf16 activations; medians of triton.testing.do_bench; speed-up = bf16 time / kernel time.", "",
             "| backend | M | K = N | weights | us | bf16 us | speed-up | check |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['M']} | {r['K']} | {label(r['bits'], r['group'])} | "
              f"{r['ms'] * 1e3:.1f} | {r['bf16_ms'] * 1e3:.1f} | {r['speedup_vs_bf16']:.2f}x | {r['status']} |" for r in rows]
    script.write_results(out, {f"{name}.json": json.dumps({"meta": meta, "rows": rows}, indent=1),
                               f"{name}.md": "\n".join(lines) + "\n"})
    print(f"wrote {out}/{name}.json and .md")


if __name__ == "__main__":
    sys.exit(script.run(main))
