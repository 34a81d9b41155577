"""The `mini-llm` command.

    mini-llm train [--preset NAME] [--out DIR] [--kernels SPEC] [setting overrides...]
    mini-llm sample RUN_OR_CKPT [--prompt TEXT] [--num-tokens N] [--temperature T] [--top-k K]
                    [--quant int8|int4 [--group-size G]] [--dtype ...] [--kernels SPEC]
    mini-llm quantize RUN_OR_CKPT --quant int8|int4 [--group-size G] --out FILE [--force]
    mini-llm bench [--shapes quick|full] [--ops ...] [--backends ...] [--dtype ...] [--json PATH]
    mini-llm profile [--preset NAME] [--kernels SPEC] [--steps N]
    mini-llm tokenizer train [--data PATH] [--vocab-size N] [--special-tokens TEXT ...] [--out DIR] [--force]
    mini-llm plot RUN [RUN ...] [-o PNG] [--force]
    mini-llm memory [--preset NAME] [--batch-size N] [--activation-checkpointing] [--measure]
    mini-llm scratch train [--context K] [--hidden H] [setting overrides...]   (NumPy, stage F)
    mini-llm costs [--preset NAME] [model settings...] [--measure]
    mini-llm scaling sweep --out DIR --budgets C [C ...] [--grid-params N ... --grid-tokens D ...]
    mini-llm scaling fit RUNS.csv --out DIR [--params-column params|params_with_embeddings]
    mini-llm scaling check FIT.json --budget C --out DIR

Errors the user can fix (bad settings, missing data, broken checkpoints, unknown kernels) are
printed as one line and exit with status 2. Outputs are checked before any work and never
replace an existing file unless --force is given (mini_llm/files.py).
"""

import argparse
import dataclasses
import sys
import time
import types

import torch

from . import nvtx, ops
from .bench.ceilings import ceilings
from .bench.suite import add_arguments as add_bench_arguments, main as bench_main
from .bench.timing import median_ms
from .checkpoint import load_checkpoint, load_model, resolve_path
from .data import TINY_SHAKESPEARE
from .errors import MiniLLMError
from .files import check_output_file, check_output_folder, fetch
from .generate import default_prompt, generate
from .memory import format_prediction, measure_training_memory, predict_training_memory
from .loop import seeded
from .model import CHOICES, GPTConfig
from .plot import plot_runs
from .presets import PRESETS, default_preset, get_preset
from .profile import profile, synthetic_training_of
from .quant import load_quantized, quantize_model, save_quantized
from .scaling.costs import format_costs, model_costs
from .scaling.fit import fit_table, format_summary
from .scaling.sweep import Settings, check_prediction, plan_grid, plan_isoflop, run_sweep
from .scratch.train import ScratchTrainConfig, train_char_mlp
from .tokenizer import train_bpe_file
from .tokenizer.gpt2_format import ENCODER_FILE, MERGES_FILE
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
    prediction = predict_training_memory(config, batch_size, device=kind, **settings)
    measured = measure_training_memory(config, batch_size, device, **settings) if args.measure else None
    print(format_prediction(prediction, measured))


def cmd_scratch_train(args):
    train_char_mlp(ScratchTrainConfig(**given(args, ScratchTrainConfig)))


def cmd_tokenizer_train(args):
    out = check_output_folder(args.out)
    if not args.force and any((out / name).exists() for name in (ENCODER_FILE, MERGES_FILE)):
        raise MiniLLMError(f"{out} holds a tokenizer; pass --force to replace it, or another --out")
    path = fetch(TINY_SHAKESPEARE, args.data)
    t0 = time.perf_counter()
    tok = train_bpe_file(path, args.vocab_size, args.special_tokens, backend=args.backend, progress=True)
    seconds = time.perf_counter() - t0
    if tok.vocab_size < args.vocab_size:
        print(f"warning: the text allows only {tok.vocab_size} tokens, not the {args.vocab_size} "
              "asked for: every piece of it became a single token first", file=sys.stderr)
    tok.save(args.out)
    print(f"{tok.vocab_size} tokens (256 bytes, {len(tok.merges)} merges, {len(tok.special_tokens)} "
          f"special) learned from {path} in {seconds:.2f} s ({tok.backend.name} backend); "
          f"wrote {args.out}/encoder.json and vocab.bpe")


def cmd_plot(args):
    check_output_file(args.output, args.force)
    plot_runs(args.runs, args.output)
    print(f"wrote {args.output}")


def cmd_scaling_fit(args):
    check_output_folder(args.out)
    summary = fit_table(args.runs, args.out, args.params_column, args.bootstrap, args.seed,
                        args.level, args.budget_tolerance, args.force)
    print(format_summary(summary))
    print(f"wrote {args.out}/fit.json and plots")


def sweep_settings(args):
    return Settings(out=args.out, data=args.data, block_size=args.block_size,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    eval_iters=args.eval_iters, device=args.device)


def cmd_scaling_sweep(args):
    check_output_folder(args.out)  # before hours of runs
    s = sweep_settings(args)
    vocab_size, train_tokens = s.dataset()
    planned = plan_isoflop(args.budgets, s, vocab_size) + plan_grid(
        args.grid_params, args.grid_tokens, s, vocab_size)
    if not planned:
        raise MiniLLMError("nothing to run: give --budgets, or --grid-params with --grid-tokens")
    print(f"{len(planned)} runs; the training split has {train_tokens} tokens")
    rows = run_sweep(planned, s)
    for r in rows:
        print(f"{r['name']:>22}: N {r['params']:>8} D {r['tokens']:>9} C {r['flops']:.2e} "
              f"loss {r['loss']:.4f} ({r['epochs']:.2f} epochs, {r['seconds']:.0f} s)")
    print(f"wrote {args.out}/runs.csv")


def cmd_scaling_check(args):
    check_output_folder(args.out)
    r = check_prediction(args.fit, args.budget, sweep_settings(args))
    print(f"budget {args.budget:.2e}: N {r['params']} trained on {r['tokens']} tokens "
          f"({r['epochs']:.2f} epochs): predicted loss {r['predicted_loss']:.4f}, measured "
          f"{r['loss']:.4f}, error {r['error']:+.4f} ({100 * r['relative_error']:+.1f}%)")
    print(f"wrote {args.out}/check.json")


def cmd_costs(args):
    preset = get_preset(args.preset or default_preset())
    config = GPTConfig(**{**preset["model"], **given(args, GPTConfig)})
    batch_size = preset["train"]["batch_size"] if args.batch_size is None else args.batch_size
    device, dtype, _ = resolve_device(args.device, "auto")
    costs = model_costs(config, batch_size, dtype, "cuda" if device.startswith("cuda") else "cpu")
    given_limits = (args.copy_gb_s, args.matmul_tflop_s)
    if any(x is not None for x in given_limits):
        if not all(x is not None and x > 0 for x in given_limits):
            raise MiniLLMError("give both --copy-gb-s and --matmul-tflop-s, positive, or neither "
                               "(then the bench suite's measured ceilings of this device are used)")
        limits = {"device": "the given device", "copy_gb_s": args.copy_gb_s,
                  "matmul_tflop_s": args.matmul_tflop_s, "source": "given"}
    else:
        limits = {**ceilings(torch.device(device), check=False),
                  "source": "bench/ceilings.py, measured once and cached"}
    measured = None
    if args.measure:  # the median step: one slow window on a shared machine does not decide it
        _, train_step, _ = synthetic_training_of(config, batch_size, torch.device(device))
        measured = median_ms(train_step, torch.device(device))
    print(format_costs(costs, limits, measured))


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
    p.set_defaults(func=cmd_memory)

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
    p.add_argument("--force", action="store_true", help="replace a tokenizer already in --out")
    p.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("plot", help="plot the loss curves of one or more runs")
    p.add_argument("runs", nargs="+", help="run folders (each with a metrics.jsonl)")
    p.add_argument("-o", "--output", default="loss.png", help="the PNG to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("costs", help="a model's parameters by part, FLOPs per token, memory per "
                       "parameter, KV cache, arithmetic intensity and predicted step time")
    p.add_argument("--preset", help="default: shakespeare-char on a GPU, shakespeare-char-cpu otherwise")
    add_dataclass_flags(p, GPTConfig)
    p.add_argument("--batch-size", type=int, help="sequences per training step (default: the preset's)")
    p.add_argument("--device", default="auto", help=HELP["device"])
    p.add_argument("--copy-gb-s", type=float, help="the device's copy bandwidth (with "
                   "--matmul-tflop-s; default: measured by the bench suite, cached)")
    p.add_argument("--matmul-tflop-s", type=float, help="the device's matmul rate")
    p.add_argument("--measure", action="store_true", help="also time real training steps of the "
                   "model (random tokens; the median step) beside the predicted step time")
    p.set_defaults(func=cmd_costs)

    p = sub.add_parser("scaling", help="stage 4: scaling laws (Hoffmann et al. approaches 2 and 3)")
    scaling = p.add_subparsers(dest="scaling_command", required=True)
    p = scaling.add_parser("fit", help="fit a run table (CSV: params, tokens, flops, loss, ...): "
                           "isoFLOP parabolas and L(N, D) = E + A/N^alpha + B/D^beta, with "
                           "bootstrap intervals; writes fit.json and plots")
    p.add_argument("runs", help="the run table, e.g. runs.csv from `mini-llm scaling sweep`")
    p.add_argument("--out", required=True, help="folder for fit.json, isoflop.png, n_opt.png, "
                   "contours.png")
    p.add_argument("--params-column", default="params", choices=("params", "params_with_embeddings"),
                   help="which count is N (default: params, without embeddings)")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals (0: none)")
    p.add_argument("--level", type=float, default=0.95, help="the intervals' coverage")
    p.add_argument("--seed", type=int, default=0, help="seeds the bootstrap resamples")
    p.add_argument("--budget-tolerance", type=float, default=0.05,
                   help="runs whose flops differ by less than this fraction share a budget")
    p.add_argument("--force", action="store_true", help="overwrite an existing fit.json")
    p.set_defaults(func=cmd_scaling_fit)

    def sweep_flags(p):
        p.add_argument("--out", required=True, help="folder for runs.csv and runs/<name>/")
        p.add_argument("--data", help=HELP["data"])
        p.add_argument("--block-size", type=int, default=64)
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every run")
        p.add_argument("--seed", type=int, default=1337)
        p.add_argument("--eval-iters", type=int, default=20, help="validation batches per evaluation")
        p.add_argument("--device", default="auto", help=HELP["device"])

    p = scaling.add_parser("sweep", help="train an isoFLOP design (and/or an N x D grid) through "
                           "the training loop; writes runs.csv (resumable: finished runs are skipped)")
    sweep_flags(p)
    p.add_argument("--budgets", type=float, nargs="*", default=[],
                   help="compute budgets in FLOPs, e.g. 1e11 3e11 1e12: five sizes each")
    p.add_argument("--grid-params", type=float, nargs="*", default=[], help="grid: model sizes N")
    p.add_argument("--grid-tokens", type=float, nargs="*", default=[], help="grid: token counts D")
    p.set_defaults(func=cmd_scaling_sweep)

    p = scaling.add_parser("check", help="train the run a fit predicts best at a larger budget and "
                           "compare its loss with the prediction (writes check.json)")
    p.add_argument("fit", help="fit.json from `mini-llm scaling fit`")
    p.add_argument("--budget", type=float, required=True, help="the compute budget in FLOPs")
    sweep_flags(p)
    p.set_defaults(func=cmd_scaling_check)
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
