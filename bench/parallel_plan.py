"""The planner's table for Llama 3 8B and 70B on 8 to 1024 H100s, and its prediction beside a
published run (torchtitan's Llama 3.1 8B FSDP on 8 and 128 H100s).

    python bench/parallel_plan.py

Writes bench/results/parallel_plan.{json,md}. Nothing is measured here: every figure is the
planner's (mini_llm/parallel/plan.py), with its datasheet H100 and its default network
(400 Gb/s = 50 GB/s per GPU, 5 us, 8 GPUs per NVLink node), a global batch of 512 sequences of
8192 tokens (4M tokens), micro-batches of one sequence, bf16 autocast, full activation
checkpointing. The published comparison is not fitted: the planner's numbers are printed as
they come, beside the paper's.
"""

import json
from pathlib import Path

from mini_llm.parallel.plan import GPUS, MODELS, Network, format_plan, plan

RESULTS = Path(__file__).parent / "results"
GPU_COUNTS = (8, 16, 32, 64, 128, 256, 512, 1024)
NET = Network(50e9, 5e-6, 8)
GLOBAL_BATCH, MICRO_BATCH, SEQ = 512, 1, 8192

# torchtitan, benchmarks/llama3_h100_202412_torchtitan.md (pytorch/torchtitan on GitHub):
# Llama 3.1 8B, FSDP (1D), local batch 2, sequence 8192 (its llama3_8b.toml), selective
# activation checkpointing, bf16, no torch.compile, on H100s of 96 GB HBM2e at 500 W.
# "1D Llama 3.1 8B on 8 or 128 H100 GPUs without Float8 achieves 33% to 39% MFU."
PUBLISHED = [
    {"gpus": 8, "global_batch": 16, "tps_per_gpu": 5762, "memory_gib": 82.4},
    {"gpus": 128, "global_batch": 256, "tps_per_gpu": 5605, "memory_gib": 67.0},
]


def table(model, gpus):
    rows = plan(MODELS[model], gpus, GPUS["h100"], NET, GLOBAL_BATCH, MICRO_BATCH, SEQ)
    fitting = [r for r in rows if r["fits"]]
    pure = [r for r in rows if r["layout"] in (f"fsdp {gpus}", f"ddp {gpus}")]
    return fitting[:3] + [r for r in pure if r not in fitting[:3]]


def published_comparison():
    out = []
    for pub in PUBLISHED:
        rows = plan(MODELS["llama3-8b"], pub["gpus"], GPUS["h100"], NET, pub["global_batch"], 2, SEQ)
        fsdp = next(r for r in rows if r["layout"] == f"fsdp {pub['gpus']}")
        tps = 2 * SEQ * fsdp["accum"] / fsdp["step"]
        out.append({**pub, "predicted_tps_per_gpu": tps, "predicted_mfu": fsdp["mfu"],
                    "predicted_memory_gib": fsdp["memory"] / 2**30, "predicted_step_s": fsdp["step"],
                    "predicted_compute_s": fsdp["compute"], "predicted_communication_s": fsdp["communication"],
                    "ratio_tps": tps / pub["tps_per_gpu"]})
    return out


def main():
    results = {"settings": {"gpu": GPUS["h100"].name, "network_gb_s": NET.bandwidth / 1e9,
                            "latency_us": NET.latency * 1e6, "gpus_per_node": NET.gpus_per_node,
                            "global_batch": GLOBAL_BATCH, "micro_batch": MICRO_BATCH, "seq_len": SEQ,
                            "activation_checkpointing": "full", "compute_dtype": "bfloat16"},
               "tables": {}, "published": published_comparison()}
    lines = ["# The planner's table: Llama 3 8B and 70B on 8 to 1024 H100s", "",
             "Made by `python bench/parallel_plan.py` (mini_llm/parallel/plan.py; nothing measured). "
             f"H100 SXM datasheet (989 TFLOP/s bf16, 80 GB); {NET.bandwidth / 1e9:g} GB/s and "
             f"{NET.latency * 1e6:g} us per GPU between nodes, NVLink inside a node of {NET.gpus_per_node}; "
             f"global batch {GLOBAL_BATCH} x {SEQ} tokens, micro-batches of {MICRO_BATCH}, bf16 autocast, "
             "full activation checkpointing. Per GPU count: the three fastest layouts that fit, then "
             "plain fsdp and ddp. Communication is not assumed hidden behind compute.", ""]
    for model in MODELS:
        for gpus in GPU_COUNTS:
            rows = table(model, gpus)
            results["tables"][f"{model} x {gpus}"] = rows
            lines += ["```", format_plan(rows, f"{model} on {gpus} GPUs"), "```", ""]
    lines += ["## Beside a published run: torchtitan, Llama 3.1 8B, FSDP on H100s", "",
              "Source: pytorch/torchtitan, `benchmarks/llama3_h100_202412_torchtitan.md` (Tables 1 and 3): "
              "FSDP, local batch 2, sequence 8192, selective activation checkpointing, bf16, no "
              "torch.compile; H100s with 96 GB HBM2e at 500 W, 400 Gb/s RDMA per GPU; reported 33-39% "
              "MFU without Float8. The planner: its fsdp (this project's: float32 all-gathers, full "
              "checkpointing), the same GPUs, batch and sequence, untuned.", "",
              "| GPUs | published tokens/s/GPU | predicted | predicted / published | published memory | "
              "predicted memory | predicted MFU | predicted compute / communication per step |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["published"]:
        lines.append(f"| {r['gpus']} | {r['tps_per_gpu']:,} | {r['predicted_tps_per_gpu']:,.0f} | "
                     f"{r['ratio_tps']:.2f} | {r['memory_gib']} GiB | {r['predicted_memory_gib']:.1f} GiB | "
                     f"{r['predicted_mfu'] * 100:.0f}% | {r['predicted_compute_s']:.2f} s / "
                     f"{r['predicted_communication_s']:.2f} s |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parallel_plan.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "parallel_plan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
