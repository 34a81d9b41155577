"""mini-llm train, sample, quantize, plot (stage 3 and inference)."""

import sys
import time

import torch

from .. import nvtx, ops
from ..checkpoint import load_checkpoint, load_model, resolve_path
from ..errors import MiniLLMError
from ..files import check_output_file
from ..generate import default_prompt, generate
from ..loop import seeded
from ..model import GPTConfig
from ..parallel.launch import relaunch, strip_launcher_flags
from ..plot import plot_runs
from ..presets import PRESETS, default_preset, get_preset
from ..quant import load_quantized, quantize_model, save_quantized
from ..train import TrainConfig, resolve_device, train
from .common import (
    HELP,
    QUANT_BITS,
    add_dataclass_flags,
    add_quant_flags,
    check_quant_flags,
    given,
)


def cmd_train(args):
    if args.nproc_per_node is not None:  # start the ranks, each running this command
        if not args.parallel:
            raise MiniLLMError("--nproc-per-node needs --parallel STRATEGY")
        return relaunch(strip_launcher_flags(args.argv), args.nproc_per_node, args.master_port)
    train_given = given(args, TrainConfig)
    model_given = given(args, GPTConfig, skip=("vocab_size",))
    if args.resume:  # the checkpoint's settings, changed only where a flag was given
        if not args.out:
            raise MiniLLMError("--resume needs --out, the run folder to continue")
        changes = {k: v for k, v in train_given.items() if k != "out"}
        train(model_given, TrainConfig(out=args.out), resume=changes)
        return
    preset_name = args.preset or default_preset()
    preset = get_preset(preset_name)
    cfg = TrainConfig(**{"out": f"out/{preset_name}", **preset["train"], **train_given})
    train({**preset["model"], **model_given}, cfg)


def load_for_inference(run, device, quant=None, group_size=None):
    """A full-precision or quantized checkpoint as a model; `quant` quantizes a full one."""
    check_quant_flags(quant, group_size)
    if load_checkpoint(run).meta.get("quantization"):
        if quant:
            raise MiniLLMError(f"{run} is already quantized; drop --quant")
        return load_quantized(run, device)
    model, ckpt = load_model(run, device)
    if quant:
        summary = quantize_model(model, QUANT_BITS[quant], group_size)
        print(f"quantized: {summary}", file=sys.stderr)
    return model, ckpt


def cmd_sample(args):
    ops.set_kernels(args.kernels)
    if args.nvtx:
        nvtx.enable()
    device, dtype, _ = resolve_device(args.device, args.dtype)
    model, ckpt = load_for_inference(args.run, device, args.quant, args.group_size)
    model = model.to(getattr(torch, dtype))  # weights in bf16 on a GPU: half the bytes per token
    tokenizer = ckpt.tokenizer
    # raises on characters the model never saw
    prompt = default_prompt(tokenizer) if args.prompt is None else tokenizer.encode(args.prompt)
    if len(prompt) > model.config.block_size:
        print(f"note: the prompt is longer than the context ({model.config.block_size}); "
              "only its end is seen", file=sys.stderr)
    if args.num_samples < 1:
        raise MiniLLMError(f"--num-samples must be >= 1, got {args.num_samples}")
    idx = torch.tensor([prompt] * args.num_samples, device=device)
    generator = seeded(args.seed, "sample") if device == "cpu" else None
    if generator is None:
        torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    out = generate(model, idx, args.num_tokens, args.temperature, args.top_k, generator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    for row in out.tolist():
        print(tokenizer.decode(row))
        print("-" * 40)
    n = args.num_tokens * args.num_samples
    quant = getattr(model, "quantization", None)
    weights = f", int{quant['bits']} weights" if quant else ""
    print(f"{n} tokens in {seconds:.2f} s: {n / seconds:,.0f} tokens/s on {device} ({dtype}{weights}, "
          f"kernels: {ops.describe()})", file=sys.stderr)


def cmd_quantize(args):
    check_quant_flags(args.quant, args.group_size)
    check_output_file(args.out, args.force, inputs=[resolve_path(args.run)])
    model, ckpt = load_model(args.run, "cpu")
    summary = quantize_model(model, QUANT_BITS[args.quant], args.group_size)
    save_quantized(args.out, model, ckpt.meta)
    print(f"{summary}; wrote {args.out}")


def cmd_plot(args):
    check_output_file(args.output, args.force)
    plot_runs(args.runs, args.output)
    print(f"wrote {args.output}")


def add_training_commands(sub):
    """train, sample, quantize, plot."""
    p = sub.add_parser("train", help="train the mini-LLM (default: Tiny Shakespeare, by characters)")
    p.add_argument("--preset", help=f"{', '.join(PRESETS)} (default: shakespeare-char on a GPU, "
                   "shakespeare-char-cpu otherwise)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--nproc-per-node", type=int, help="ranks to start on this machine through "
                   "torchrun, each running this command with --parallel")
    p.add_argument("--master-port", type=int, help="with --nproc-per-node: rank 0's port "
                   "(default: a free one)")
    add_dataclass_flags(p, TrainConfig)
    add_dataclass_flags(p, GPTConfig, skip=("vocab_size",))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained model")
    p.add_argument("run", help="a run folder or its ckpt.safetensors")
    p.add_argument("--prompt", help="default: a newline (the first token where the vocabulary has none)")
    p.add_argument("--num-tokens", "-n", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="the weights' dtype (auto: bfloat16 on a GPU that has it, else float32)")
    add_quant_flags(p, required=False)
    p.add_argument("--kernels", help=HELP["kernels"])
    p.add_argument("--nvtx", action="store_true", help=HELP["nvtx"])
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("quantize", help="write a weight-only quantized copy of a checkpoint")
    p.add_argument("run", help="a run folder or its ckpt.safetensors")
    add_quant_flags(p, required=True)
    p.add_argument("--out", required=True, help="the quantized checkpoint to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=cmd_quantize)


    p = sub.add_parser("plot", help="plot the loss curves of one or more runs")
    p.add_argument("runs", nargs="+", help="run folders (each with a metrics.jsonl)")
    p.add_argument("-o", "--output", default="loss.png", help="the PNG to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.set_defaults(func=cmd_plot)
