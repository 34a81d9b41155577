"""Decode speed of the mini-LLM: tokens/s at batch 1 and 64, weights in bf16 (float32 on a
CPU), int8 and int4 (group 64), with each kernel set that runs here.

    python -m mini_llm.bench.decode_speed [--run out/shakespeare-char] [--kernels torch,triton,cuda]

Each configuration greedily decodes `--tokens` new tokens after a one-token prompt, through the
pre-allocated KV cache (mini_llm/generate.py), so a step is one decode_attention per layer and
the weight matmuls, quantized or not. tokens/s = batch x new tokens / wall time, the median of
3 runs after a warm-up run (which also autotunes). Without --run the preset's model is randomly
initialised: speed does not depend on the weights' values.
Writes decode_<device>.{json,md} into --out (bench/script.py).
"""

import argparse
import copy
import json
import platform
import statistics
import time
import sys

import torch

from mini_llm import ops
from mini_llm.checkpoint import load_model
from mini_llm.generate import generate
from mini_llm.model import GPT, GPTConfig
from mini_llm.presets import get_preset
from mini_llm.quant import quantize_model

from . import script
from .suite import _versions

FORMATS = {"full": None, "int8": (8, None), "int4 g64": (4, 64)}


def tokens_per_s(model, batch, new_tokens, device):
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generate(model, prompt, new_tokens, temperature=0)  # warm-up, autotuning
    times = []
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        generate(model, prompt, new_tokens, temperature=0)
        sync()
        times.append(time.perf_counter() - t0)
    return batch * new_tokens / statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a trained run (default: the preset's model, random weights)")
    p.add_argument("--preset", default="shakespeare-char")
    p.add_argument("--kernels", default="torch,triton,cuda", help="kernel sets to try, those that run here")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per sequence")
    script.add_out_flag(p)
    args = p.parse_args(argv)
    out = script.check_out(args.out)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.run:
        base, _ = load_model(args.run, device)
    else:
        base = GPT(GPTConfig(vocab_size=65, **get_preset(args.preset)["model"])).to(device).eval()
    base = base.to(dtype)
    kernel_sets = [k for k in args.kernels.split(",") if ops.unavailable_reason(k) is None
                   and not (k == "triton" and device.type == "cpu")]  # interpreted: minutes per token
    rows = []
    for fmt, quant in FORMATS.items():
        model = copy.deepcopy(base)
        summary = quantize_model(model, *quant) if quant else None
        weight_mib = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
        for kernels in kernel_sets:
            for batch in map(int, args.batches.split(",")):
                with ops.use_kernels(kernels):
                    tps = tokens_per_s(model, batch, args.tokens, device)
                rows.append({"weights": fmt if quant else str(dtype).removeprefix("torch."), "kernels": kernels,
                             "batch": batch, "tokens_per_s": tps, "model_mib": weight_mib,
                             "quantized": str(summary) if summary else ""})
                print(f"{rows[-1]['weights']:>9} {kernels:>6} batch {batch:>3}: {tps:>12,.0f} tokens/s "
                      f"({weight_mib:.1f} MiB of weights)")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    meta = {**_versions(), "device": device_name, "preset": args.preset, "run": args.run, "new_tokens": args.tokens,
            "command": "python -m mini_llm.bench.decode_speed " + " ".join(argv or [])}
    name = f"decode_{'gpu' if device.type == 'cuda' else 'cpu'}"
    lines = [f"# Decode tokens/s, {meta['device']}", "",
             f"{args.preset}, {args.tokens} new tokens after a 1-token prompt, greedy, KV cache; "
             "median of 3 runs.", "", "| weights | kernels | batch | tokens/s | weights MiB |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['weights']} | {r['kernels']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['model_mib']:.1f} |"
              for r in rows]
    script.write_results(out, {f"{name}.json": json.dumps({"meta": meta, "rows": rows}, indent=1),
                               f"{name}.md": "\n".join(lines) + "\n"})
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    sys.exit(script.run(main))
