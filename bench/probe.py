"""The GPU run's performance probe (bench/gpu_run.sh): each op's headline shapes against PyTorch.

    python -m mini_llm.bench.probe --warm [--jobs 8]   # compile the Triton kernels, in parallel
    python -m mini_llm.bench.probe --out DIR           # then measure, alone on the GPU

  layer_norm        16384 x 4096, fwd and fwd+bwd, vs F.layer_norm (the `torch` backend)
  attention         hs 64 / 128, T 2k and 16k, causal and not, fwd and fwd+bwd, vs SDPA
  decode_attention  caches of 4k-16k, vs SDPA, and its share of the copy bandwidth
  quant_matmul      int8 / int4 g64 / int4 g128, M 1, 16 and 2048, K = N = 4096, vs a bf16 matmul

All bf16, backends torch, triton and cuda. The first three are the bench suite's "headline"
shapes (bench/specs.py) written as the suite writes them (DIR/results.json, results.md,
roofline.png, the device named), quant_matmul is bench/quant_vs_bf16.py on these sizes
(DIR/quant_vs_bf16_gpu.json, .md).

Triton autotunes a kernel by compiling every candidate config, one after another, the first
time it meets a key: ~150 compiles for these shapes, minutes in one process. --warm runs each
Triton case once in parallel processes, so the compiled kernels land in Triton's cache; the
measuring run loads them and tunes (times every config) with the GPU to itself.
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import sys

SUITE_OPS = ("layer_norm", "attention", "decode_attention")
QUANT_SIZES, QUANT_TOKENS = "4096", "1,16,2048"


def suite_argv(out, backends):
    with_torch = ",".join(dict.fromkeys(["torch", *backends.split(",")]))  # every row's peer
    return ["bench", "--shapes", "headline", "--ops", ",".join(SUITE_OPS), "--backends", with_torch,
            "--dtype", "bfloat16", "--no-e2e", "--out", out]


def quant_argv(out, backends):
    kernels = ",".join(b for b in backends.split(",") if b != "torch")  # torch is the bf16 matmul
    return ["--sizes", QUANT_SIZES, "--tokens", QUANT_TOKENS, "--backends", kernels, "--out", out]


def warm_units():
    """Every Triton call the measuring run makes, as (op, *arguments), the slowest to compile
    (attention forward + backward) first so that the pool ends together."""
    from .quant_vs_bf16 import FORMATS
    from .run import PASSES, _passes
    from .specs import SPECS, cases

    units = [("suite", op, i, p) for op in SUITE_OPS for i, _ in enumerate(cases(op, "headline"))
             for p in _passes(SPECS[op], PASSES)]
    units.sort(key=lambda u: (u[1] != "attention", u[3] != "fwd+bwd"))
    units += [("quant", int(K), bits, group, int(M)) for K in QUANT_SIZES.split(",") for bits, group in FORMATS
              for M in QUANT_TOKENS.split(",")]
    return units


def warm_one(unit):
    """Run one unit's Triton kernel once on random bf16 inputs (results unchecked: the measuring
    run checks them). Returns an error message, or None."""
    import torch

    from mini_llm import ops

    try:
        if unit[0] == "suite":
            _, op, index, pass_ = unit
            from .specs import SPECS, cases

            spec, case = SPECS[op], cases(op, "headline")[index]
            inputs = spec.make(case.dims, torch.bfloat16, "cuda", torch.Generator().manual_seed(0))
            fn = ops.implementation(op, "triton")
            with torch.set_grad_enabled(pass_ == "fwd+bwd"):
                live = [x.requires_grad_(pass_ == "fwd+bwd") if x.is_floating_point() else x for x in inputs]
                out = spec.call(fn, live, case.dims)
                if pass_ == "fwd+bwd":
                    out.backward(torch.ones_like(out))
        else:
            from mini_llm.ops.quant_format import quantize

            _, K, bits, group, M = unit
            qweight, scales = (t.cuda() for t in quantize(torch.randn(K, K) * 0.02, bits, group))
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ops.implementation("quant_matmul", "triton")(x, qweight, scales, group or K)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 (reported, and the measuring run shows it as a row)
        return f"{unit}: {type(e).__name__}: {e}"[:300]
    return None


def warm(jobs):
    units = warm_units()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        errors = [e for e in pool.map(warm_one, units) if e]
    print(f"warmed {len(units) - len(errors)}/{len(units)} Triton cases with {jobs} processes")
    for e in errors:
        print("  failed:", e)
    return 0


def measure(out, backends):
    from . import quant_vs_bf16, suite

    parser = argparse.ArgumentParser(prog="mini-llm bench")
    suite.add_arguments(parser)
    args = parser.parse_args(suite_argv(out, backends)[1:])
    args.argv = suite_argv(out, backends)  # the command the results name
    status = suite.main(args)
    if any(b != "torch" for b in backends.split(",")):
        quant_vs_bf16.main(quant_argv(out, backends))
    return status


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/probe", help="folder for the results")
    p.add_argument("--backends", default="torch,triton,cuda", help="those to measure")
    p.add_argument("--warm", action="store_true", help="only compile, in parallel processes")
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="processes for --warm")
    args = p.parse_args(argv)
    return warm(args.jobs) if args.warm else measure(args.out, args.backends)


if __name__ == "__main__":
    sys.exit(main())
