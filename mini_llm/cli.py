"""The `mini-llm` command.

    mini-llm train [--preset NAME] [--out DIR] [--kernels SPEC] [setting overrides...]
    mini-llm sample RUN_OR_CKPT [--prompt TEXT] [--num-tokens N] [--temperature T] [--top-k K]
                    [--quant int8|int4 [--group-size G]] [--dtype ...] [--kernels SPEC]
    mini-llm quantize RUN_OR_CKPT --quant int8|int4 [--group-size G] --out FILE
    mini-llm bench [--shapes quick|full] [--ops ...] [--backends ...] [--dtype ...] [--json PATH]
    mini-llm profile [--preset NAME] [--kernels SPEC] [--steps N]
    mini-llm tokenizer train [--data PATH] [--vocab-size N] [--special-tokens TEXT ...] [--out DIR]
    mini-llm plot RUN [RUN ...] [-o PNG]
    mini-llm memory [--preset NAME] [--batch-size N] [--activation-checkpointing] [--measure]
    mini-llm scratch train [--context K] [--hidden H] [setting overrides...]   (NumPy, stage F)
    mini-llm parallel plan [--model llama3-8b|llama3-70b|PRESET] [--gpus N] [--gpu h100] [--bandwidth GB/s] ...

Errors the user can fix (bad settings, missing data, broken checkpoints, unknown kernels) are
printed as one line and exit with status 2.
"""

import argparse
import dataclasses
import sys
import time
import types

import torch

from . import nvtx, ops
from .errors import MiniLLMError
from .model import CHOICES, GPTConfig
from .presets import PRESETS, default_preset, get_preset
from .scratch.train import ScratchTrainConfig
from .loop import seeded
from .train import TrainConfig, resolve_device, train

HELP = {
    "out": "run folder (default: out/<preset>)",
    "data": "a UTF-8 text file to train on (default: Tiny Shakespeare, found or downloaded)",
    "kernels": "backends for the ops, e.g. torch, reference, triton, auto or "
               "attention=cuda,layer_norm=triton (default: $MINI_LLM_KERNELS, else torch)",
    "device": "auto, cpu or cuda", "dtype": "auto, float32 or bfloat16 (autocast)",
    "compile": "torch.compile the model", "grad_accum": "micro-batches per optimizer step",
    "sample_tokens": "tokens to sample at the end (0: none)",
    "tokenizer": "a BPE tokenizer folder (from `mini-llm tokenizer train`) or gpt2 (GPT-2's own); "
                 "default: characters",
    "nvtx": "emit NVTX ranges for Nsight (see docs/stage-4-profiling-memory.md)",
    "mlp_hidden": "the MLP's inner width (default: 4 x n_embd for gelu; for swiglu 8/3 x n_embd "
                  "rounded up to a multiple of 64)",
    "activation_checkpointing": "blocks keep only their input and recompute the rest in the "
                                "backward: less memory, one more forward",
}


def add_dataclass_flags(parser, cls, skip=()):
    """One --flag per dataclass field; default None, so what the user gave can be told apart.
    A field's help is its metadata["help"], else HELP[name]."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type.__args__[0] if isinstance(f.type, types.UnionType) else f.type
        extra = {"choices": CHOICES[f.name]} if f.name in CHOICES else {}
        text = f.metadata.get("help", HELP.get(f.name))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text, **extra)


def given(args, cls, skip=()):
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name) is not None}


def cmd_train(args):
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


QUANT_BITS = {"int8": 8, "int4": 4}


def check_quant_flags(quant, group_size):
    if group_size is not None and quant != "int4":
        raise MiniLLMError("--group-size is for --quant int4; int8 keeps one scale per output channel")


def load_for_inference(run, device, quant=None, group_size=None):
    """A full-precision or quantized checkpoint as a model; `quant` quantizes a full one."""
    from .checkpoint import load_checkpoint, load_model
    from .quant import load_quantized, quantize_model

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
    from .generate import generate

    ops.set_kernels(args.kernels)
    if args.nvtx:
        nvtx.enable()
    device, dtype, _ = resolve_device(args.device, args.dtype)
    model, ckpt = load_for_inference(args.run, device, args.quant, args.group_size)
    model = model.to(getattr(torch, dtype))  # weights in bf16 on a GPU: half the bytes per token
    tokenizer = ckpt.tokenizer
    prompt = tokenizer.encode(args.prompt)  # raises on characters the model never saw
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
    from .checkpoint import load_model
    from .quant import quantize_model, save_quantized

    check_quant_flags(args.quant, args.group_size)
    model, ckpt = load_model(args.run, "cpu")
    summary = quantize_model(model, QUANT_BITS[args.quant], args.group_size)
    save_quantized(args.out, model, ckpt.meta)
    print(f"{summary}; wrote {args.out}")


def cmd_bench(args):
    from .bench.suite import main as bench_main

    return bench_main(args)


def cmd_profile(args):
    from .profile import profile

    preset = args.preset or default_preset()
    get_preset(preset)
    ops.parse(args.kernels)
    if args.steps < 1:
        raise MiniLLMError(f"--steps must be >= 1, got {args.steps}")
    profile(preset, args.kernels, args.out, steps=args.steps)


def cmd_memory(args):
    from .memory import format_prediction, measure_training_memory, predict_training_memory

    preset = get_preset(args.preset or default_preset())
    config = GPTConfig(vocab_size=args.vocab_size, **preset["model"])
    batch_size = preset["train"]["batch_size"] if args.batch_size is None else args.batch_size
    device, dtype, _ = resolve_device(args.device, args.dtype)
    settings = dict(dtype=dtype, kernels=args.kernels,
                    activation_checkpointing=args.activation_checkpointing)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    prediction = predict_training_memory(config, batch_size, device=kind, **settings)
    measured = measure_training_memory(config, batch_size, device, **settings) if args.measure else None
    print(format_prediction(prediction, measured))


def cmd_parallel_plan(args):
    from .parallel.plan import GPUS, MODELS, Network, Shape, format_plan, plan

    if args.model in MODELS:
        shape, seq_len = MODELS[args.model], args.seq_len or 8192
    else:
        config = GPTConfig(vocab_size=args.vocab_size, **get_preset(args.model)["model"])
        shape, seq_len = Shape.of(config), args.seq_len or config.block_size
    for name in ("gpus", "global_batch", "micro_batch", "gpus_per_node"):
        if getattr(args, name) < 1:
            raise MiniLLMError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    gpu, net = GPUS[args.gpu], Network(args.bandwidth * 1e9, args.latency * 1e-6, args.gpus_per_node)
    rows = plan(shape, args.gpus, gpu, net, args.global_batch, args.micro_batch, seq_len,
                checkpointing=args.activation_checkpointing, act_bytes=2 if args.dtype == "bfloat16" else 4)
    if not rows:
        raise MiniLLMError(f"no layout of {args.gpus} GPUs divides a global batch of {args.global_batch} "
                           f"into micro-batches of {args.micro_batch}")
    print(format_plan(rows, f"{args.model} ({shape.params() / 1e9:.2f}B parameters) on {args.gpus} x "
                      f"{gpu.name}, {args.bandwidth:g} GB/s and {args.latency:g} us between nodes; global "
                      f"batch {args.global_batch} x {seq_len} tokens, micro-batch {args.micro_batch}", args.top))


def cmd_scratch_train(args):
    from .scratch.train import train_char_mlp

    train_char_mlp(ScratchTrainConfig(**given(args, ScratchTrainConfig)))


def cmd_tokenizer_train(args):
    from .data import TINY_SHAKESPEARE, fetch
    from .tokenizer import train_bpe_file

    path = fetch(TINY_SHAKESPEARE, args.data)
    t0 = time.perf_counter()
    tok = train_bpe_file(path, args.vocab_size, args.special_tokens, backend=args.backend, progress=True)
    seconds = time.perf_counter() - t0
    tok.save(args.out)
    print(f"{tok.vocab_size} tokens (256 bytes, {len(tok.merges)} merges, {len(tok.special_tokens)} "
          f"special) learned from {path} in {seconds:.2f} s ({tok.backend.name} backend); "
          f"wrote {args.out}/encoder.json and vocab.bpe")


def cmd_plot(args):
    from .plot import plot_runs

    plot_runs(args.runs, args.output)
    print(f"wrote {args.output}")


def add_quant_flags(p, required):
    p.add_argument("--quant", choices=tuple(QUANT_BITS), required=required,
                   help="weight-only quantization of the blocks' linear layers (mini_llm/quant.py); "
                        "with the torch kernels each step dequantizes the weights, so it saves memory "
                        "but is slower: the triton and cuda kernels dequantize in registers")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=None,
                   help="int4: weights per scale (default 64); int8 has one scale per output channel")


def build_parser():
    parser = argparse.ArgumentParser(prog="mini-llm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the mini-LLM (default: Tiny Shakespeare, by characters)")
    p.add_argument("--preset", help=f"{', '.join(PRESETS)} (default: shakespeare-char on a GPU, "
                   "shakespeare-char-cpu otherwise)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    add_dataclass_flags(p, TrainConfig)
    add_dataclass_flags(p, GPTConfig, skip=("vocab_size",))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained model")
    p.add_argument("run", help="a run folder or its ckpt.safetensors")
    p.add_argument("--prompt", default="\n")
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
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("bench", help="validate and time every op and backend, then end to end")
    from .bench.suite import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="a few training steps under torch.profiler: trace, top ops, "
                       "CUDA memory snapshot")
    p.add_argument("--preset", help="default: shakespeare-char on a GPU, shakespeare-char-cpu otherwise")
    p.add_argument("--kernels", default="torch", help=HELP["kernels"])
    p.add_argument("--steps", type=int, default=5, help="profiled steps, after 2 warm-up steps")
    p.add_argument("--out", default="out/profile")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("memory", help="predict the peak memory of a training step, layer by layer "
                       "(--measure: and measure it)")
    p.add_argument("--preset", help="default: shakespeare-char on a GPU, shakespeare-char-cpu otherwise")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--vocab-size", type=int, default=65, help="default: 65, Tiny Shakespeare's characters")
    p.add_argument("--device", default="auto", help=HELP["device"])
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help=HELP["dtype"])
    p.add_argument("--kernels", default="torch", help="backends for the ops, as train takes them "
                   "(default: torch); attention=reference: the materialized attention")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help=HELP["activation_checkpointing"])
    p.add_argument("--measure", action="store_true", help="also run two training steps on random "
                   "tokens and print the measured peak beside the prediction")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("parallel", help="stage 4: plan how to split training over many GPUs")
    parallel_sub = p.add_subparsers(dest="parallel_command", required=True)
    p = parallel_sub.add_parser("plan", help="memory per GPU, bytes per step, step time and MFU of "
                                "every data x tensor x pipeline layout (mini_llm/parallel/plan.py)")
    p.add_argument("--model", default="llama3-8b", help="llama3-8b, llama3-70b or a preset "
                   f"({', '.join(PRESETS)})")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu", default="h100", choices=("h100", "h200", "a100"))
    p.add_argument("--bandwidth", type=float, default=50.0,
                   help="GB/s per GPU between nodes (default 50: 400 Gb/s InfiniBand)")
    p.add_argument("--latency", type=float, default=5.0, help="microseconds per hop between nodes")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs joined by NVLink")
    p.add_argument("--global-batch", type=int, default=512, help="sequences per optimizer step")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU and micro-batch")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 8192, or the preset's)")
    p.add_argument("--vocab-size", type=int, default=65, help="for a preset (default: 65)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"),
                   help="the compute dtype (parameters, gradients and AdamW stay float32)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--top", type=int, default=20, help="rows to print, fastest first")
    p.set_defaults(func=cmd_parallel_plan)

    p = sub.add_parser("scratch", help="stage F: neural networks from scratch in NumPy")
    scratch = p.add_subparsers(dest="scratch_command", required=True)
    p = scratch.add_parser("train", help="train the character MLP language model on the NumPy "
                           "autograd engine (Tiny Shakespeare)")
    add_dataclass_flags(p, ScratchTrainConfig)
    p.set_defaults(func=cmd_scratch_train)

    p = sub.add_parser("tokenizer", help="byte-level BPE tokenizers (GPT-2 format)")
    tokenizer_sub = p.add_subparsers(dest="tokenizer_command", required=True)
    p = tokenizer_sub.add_parser("train", help="learn a tokenizer from a UTF-8 text")
    p.add_argument("--data", help="the text (default: Tiny Shakespeare, found or downloaded)")
    p.add_argument("--vocab-size", type=int, default=1024, help="256 bytes + merges + special tokens")
    p.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"],
                   help="never split or merged (default: <|endoftext|>; none: give the flag alone)")
    p.add_argument("--backend", default="auto", choices=("auto", "python", "cpp"),
                   help="the hot loops in C++ (auto: where built) or in pure Python")
    p.add_argument("--out", default="out/tokenizer", help="folder for encoder.json and vocab.bpe")
    p.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("plot", help="plot the loss curves of one or more runs")
    p.add_argument("runs", nargs="+", help="run folders (each with a metrics.jsonl)")
    p.add_argument("-o", "--output", default="loss.png")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # the command, for result files
    try:
        status = args.func(args) or 0
    except MiniLLMError as e:
        print(f"mini-llm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mini-llm: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
