"""What weight-only quantization costs in quality and saves in memory, on a trained model.

    python -m mini_llm.bench.quant_quality --run out/shakespeare-char [--kernels torch]

The validation loss is taken over the whole validation split (consecutive, non-overlapping
windows of the model's context, every position scored), not a sample of batches, so the
differences between formats are not noise. Formats: the checkpoint's own weights, int8 per
channel, int4 with groups of 32, 64 and 128 (mini_llm/ops/quant_format.py). The weight bytes count every
parameter and buffer of the model (the embedding, shared with the output head, stays in full
precision). Writes quant_quality_<layers>L_<width>C.{json,md} into --out (bench/script.py).
"""

import argparse
import copy
import json
import sys

import numpy as np
import torch

from mini_llm import ops
from mini_llm.checkpoint import load_model
from mini_llm.data import TINY_SHAKESPEARE, prepare_dataset
from mini_llm.files import fetch
from mini_llm.quant import quantize_model

from . import script
from .suite import _versions

FORMATS = {"float32": None, "int8": (8, None), "int4 g32": (4, 32), "int4 g64": (4, 64), "int4 g128": (4, 128)}


@torch.no_grad()
def full_val_loss(model, ids, device, batch_size=64):
    """Mean cross-entropy over every position of `ids`, in windows of the model's context."""
    T = model.config.block_size
    n = (len(ids) - 1) // T
    x = torch.from_numpy(np.asarray(ids[: n * T], dtype=np.int64)).view(n, T)
    y = torch.from_numpy(np.asarray(ids[1 : n * T + 1], dtype=np.int64)).view(n, T)
    total = 0.0
    for i in range(0, n, batch_size):
        _, loss = model(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device))
        total += loss.item() * x[i : i + batch_size].numel()
    return total / (n * T)


def weight_bytes(model):
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run folder or its ckpt.safetensors")
    p.add_argument("--data", help="the text the run was trained on (default: Tiny Shakespeare)")
    p.add_argument("--kernels", default="torch", help="backends for the ops (as --kernels)")
    script.add_out_flag(p)
    args = p.parse_args(argv)
    out = script.check_out(args.out)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, ckpt = load_model(args.run, device)  # float32 weights: the row every format is compared with
    text = fetch(TINY_SHAKESPEARE, args.data or ckpt.meta["train_config"]["data"])
    val_ids = prepare_dataset(text, ckpt.tokenizer).val
    rows = []
    with ops.use_kernels(args.kernels):
        for fmt, quant in FORMATS.items():
            model = copy.deepcopy(base)
            if quant:
                quantize_model(model, *quant)
            rows.append({"weights": fmt, "val_loss": full_val_loss(model, val_ids, device),
                         "weight_bytes": weight_bytes(model)})
    for r in rows:
        r["val_loss_increase"] = r["val_loss"] - rows[0]["val_loss"]
        r["memory_saved_pct"] = 100 * (1 - r["weight_bytes"] / rows[0]["weight_bytes"])
        print(f"{r['weights']:>9}: val {r['val_loss']:.4f} ({r['val_loss_increase']:+.5f}), "
              f"{r['weight_bytes'] / 2**20:.2f} MiB ({r['memory_saved_pct']:.0f}% saved)")
    c = base.config
    name = f"{c.n_layer}L_{c.n_embd}C"
    train_cfg = ckpt.meta["train_config"]
    meta = {**_versions(), "device": str(device), "run": str(args.run), "kernels": args.kernels,
            "val_tokens": len(val_ids) - 1, "model_config": ckpt.meta["model_config"],
            "trained": {"iters": ckpt.meta["iter"], **{k: train_cfg[k] for k in ("batch_size", "lr", "seed")}},
            "command": "python -m mini_llm.bench.quant_quality " + " ".join(sys.argv[1:] if argv is None else argv)}
    lines = [f"# Weight-only quantization of a trained {c.n_layer}-layer, {c.n_embd}-wide model: "
             "validation loss and memory", "",
             f"Whole validation split ({meta['val_tokens']:,} positions), {device}, kernels {args.kernels}; "
             f"the model trained {meta['trained']['iters']} iterations (batch {meta['trained']['batch_size']}, "
             f"lr {meta['trained']['lr']}, seed {meta['trained']['seed']}).", "",
             "| weights | val loss | increase | weights MiB | saved |", "|---|---|---|---|---|"]
    lines += [f"| {r['weights']} | {r['val_loss']:.4f} | {r['val_loss_increase']:+.5f} | "
              f"{r['weight_bytes'] / 2**20:.2f} | {r['memory_saved_pct']:.0f}% |" for r in rows]
    script.write_results(out, {f"quant_quality_{name}.json": json.dumps({"meta": meta, "rows": rows}, indent=1),
                               f"quant_quality_{name}.md": "\n".join(lines) + "\n"})
    print(f"wrote {out}/quant_quality_{name}.json and .md")


if __name__ == "__main__":
    sys.exit(script.run(main))
