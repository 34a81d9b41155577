"""The training-memory prediction against the measured peak, for the shakespeare-char preset on
the CPU (batch 64, context 256, 10.7M parameters, dropout 0.2).

    python bench/memory_check.py

Per case: mini_llm.memory.predict_training_memory (float32, device cpu) and
measure_training_memory (build the model and AdamW, two training steps on random tokens as
train.py runs them, gradient clipping included, under torch.profiler; the peak of live
allocated bytes). Cases: the fused (flash) attention and the materialized reference attention,
each with and without activation checkpointing. Writes
memory_shakespeare_char_cpu.{json,md} in --out (bench/script.py).

Not measured here: the bf16-autocast GPU case that `mini-llm train` runs on a GPU. Its
prediction comes from the same code (`mini-llm memory --preset shakespeare-char --measure` on a
GPU compares it with torch.cuda.max_memory_allocated); the JSON lists it, marked unmeasured,
because no GPU was available when this was written.
"""

import argparse
import json
import subprocess
import sys

from mini_llm.bench import script
from mini_llm.memory import MIB, measure_training_memory, predict_training_memory
from mini_llm.model import GPTConfig
from mini_llm.presets import get_preset
from train_vs_nanogpt import machine

PRESET = "shakespeare-char"
CASES = [  # name, --kernels, activation checkpointing
    ("flash", "torch", False),
    ("flash, checkpointed", "torch", True),
    ("materialized", "attention=reference", False),
    ("materialized, checkpointed", "attention=reference", True),
]


def breakdown(pred):
    return {"parameters": pred.parameters, "optimizer_state": pred.optimizer_state,
            "batch": pred.batch,
            "activations": dict(pred.activations),
            "backward_transient": pred.backward_transient, "forward_peak": pred.forward_peak,
            "backward_peak": pred.backward_peak, "optimizer_peak": pred.optimizer_peak,
            "peak": pred.peak, "peak_phase": pred.peak_phase}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    script.add_out_flag(p)
    out = script.check_out(p.parse_args(argv).out)
    preset = get_preset(PRESET)
    config = GPTConfig(vocab_size=65, **preset["model"])  # Tiny Shakespeare's 65 characters
    batch = preset["train"]["batch_size"]
    rows = []
    for name, kernels, checkpointing in CASES:
        settings = dict(dtype="float32", kernels=kernels, activation_checkpointing=checkpointing)
        pred = predict_training_memory(config, batch, device="cpu", **settings)
        measured = measure_training_memory(config, batch, "cpu", **settings)
        rows.append({"case": name, **settings, "predicted": breakdown(pred), "measured": measured,
                     "ratio": pred.peak / measured})
        print(f"{name}: predicted {pred.peak / MIB:.1f} MiB ({pred.peak_phase}), measured "
              f"{measured / MIB:.1f} MiB, ratio {pred.peak / measured:.4f}", flush=True)
    gpu = predict_training_memory(config, batch, dtype="bfloat16", device="cuda")

    m = machine()
    used = ["mini_llm/memory", "mini_llm/model.py", "mini_llm/optim.py", "mini_llm/ops", __file__]
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *used], capture_output=True,
                           text=True).stdout.strip()
    m.update(git_commit=m["git_commit"] + ("+dirty" if dirty else ""),
             command="python " + " ".join(sys.argv))
    result = {"benchmark": f"{PRESET}: batch {batch}, context {config.block_size}, training step "
                           "peak memory, predicted vs measured (CPU, float32)",
              "machine": m, "rows": rows,
              "unmeasured": {"case": "flash, bfloat16 autocast, cuda", "predicted": breakdown(gpu),
                             "why": "no GPU was available"}}
    lines = ["| case | --kernels | activation checkpointing | predicted MiB (phase) | "
             "measured MiB | predicted / measured |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['kernels']} | {'on' if r['activation_checkpointing'] else 'off'} "
              f"| {r['predicted']['peak'] / MIB:.1f} ({r['predicted']['peak_phase']}) | "
              f"{r['measured'] / MIB:.1f} | {r['ratio']:.4f} |" for r in rows]
    lines.append(f"| flash, bf16 autocast, CUDA | torch | off | {gpu.peak / MIB:.1f} "
                 f"({gpu.peak_phase}) | not measured (no GPU) | |")
    lines.append(f"\n{PRESET}, batch {batch} x {config.block_size}, float32 on {m['cpu']}, "
                 f"{m['cores']} cores, torch {m['torch']}, commit {m['git_commit']}, {m['date']}: "
                 f"`{m['command']}`")
    script.write_results(out, {"memory_shakespeare_char_cpu.json": json.dumps(result, indent=2) + "\n",
                               "memory_shakespeare_char_cpu.md": "\n".join(lines) + "\n"})
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(script.run(main))
