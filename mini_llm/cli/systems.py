"""mini-llm bench, profile, memory, parallel plan (stage 4 systems)."""

import argparse

from .. import ops
from ..bench.suite import add_arguments as add_bench_arguments
from ..bench.suite import main as bench_main
from ..errors import MiniLLMError
from ..files import check_output_folder
from ..memory import format_prediction, measure_training_memory, predict_training_memory
from ..memory.parallel import format_parallel_memory
from ..model import GPTConfig
from ..parallel import DATA_PARALLEL
from ..parallel.plan import GPUS, MODELS, Network, Shape, format_plan, plan
from ..presets import PRESETS, default_preset, get_preset
from ..profile import profile
from ..train import resolve_device
from .common import (
    HELP,
)


def cmd_bench(args):
    return bench_main(args)


def cmd_profile(args):
    preset = args.preset or default_preset()
    get_preset(preset)
    ops.parse(args.kernels)
    if args.steps < 1:
        raise MiniLLMError(f"--steps must be >= 1, got {args.steps}")
    check_output_folder(args.out)
    profile(preset, args.kernels, args.out, steps=args.steps)


def cmd_memory(args):
    preset = get_preset(args.preset or default_preset())
    config = GPTConfig(vocab_size=args.vocab_size, **preset["model"])
    batch_size = preset["train"]["batch_size"] if args.batch_size is None else args.batch_size
    device, dtype, _ = resolve_device(args.device, args.dtype)
    settings = dict(dtype=dtype, kernels=args.kernels,
                    activation_checkpointing=args.activation_checkpointing)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if args.parallel:
        print(format_parallel_memory(config, batch_size, args.parallel, args.ranks, device=kind, **settings))
        return
    prediction = predict_training_memory(config, batch_size, device=kind, **settings)
    measured = measure_training_memory(config, batch_size, device, **settings) if args.measure else None
    print(format_prediction(prediction, measured))


def cmd_parallel_plan(args):
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


def add_systems_commands(sub):
    """bench, profile, memory: the kernel lab and systems measurements."""
    p = sub.add_parser("bench", help="validate and time every op and backend, then end to end")
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
    p.add_argument("--parallel", choices=DATA_PARALLEL, help="per rank under this data-parallel "
                   "strategy (--batch-size: the global batch); measured: bench/parallel_memory.py")
    p.add_argument("--ranks", type=int, default=2, help="with --parallel: the number of ranks")
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
