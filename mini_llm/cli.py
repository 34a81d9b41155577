"""The `mini-llm` command.

    mini-llm train [--preset NAME] [--out DIR] [--kernels SPEC] [setting overrides...]
                   [--nproc-per-node N --parallel ddp|ddp-torch|zero1|zero2|fsdp|fsdp-torch]
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
    mini-llm parallel plan [--model llama3-8b|llama3-70b|PRESET] [--gpus N] [--gpu h100] [--bandwidth GB/s] ...

Errors the user can fix (bad settings, missing data, broken checkpoints, unknown kernels) are
printed as one line and exit with status 2. Outputs are checked before any work and never
replace an existing file unless --force is given (mini_llm/files.py).
"""

import argparse
import dataclasses
import os
import sys
import time
import types
from pathlib import Path

import torch

from . import nvtx, ops
from .align.datasets import BUILDERS
from .align.dpo import dpo
from .align.evaluate import evaluate_runs
from .align.pairs import write_pairs
from .align.reward import train_reward_model
from .align.runs import align_config
from .align.sft import sft
from .bench.ceilings import ceilings
from .bench.suite import add_arguments as add_bench_arguments, main as bench_main
from .bench.timing import median_ms
from .checkpoint import load_checkpoint, load_model, resolve_path
from .data import TINY_SHAKESPEARE
from .errors import MiniLLMError
from .files import check_output_file, check_output_folder, fetch
from .generate import default_prompt, generate
from .loop import seeded
from .memory import format_prediction, measure_training_memory, predict_training_memory
from .memory.parallel import format_parallel_memory
from .model import CHOICES, GPTConfig
from .parallel import STRATEGY_NAMES
from .parallel.launch import relaunch, strip_launcher_flags
from .parallel.plan import GPUS, MODELS, Network, Shape, format_plan, plan
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
    "parallel": "ddp, ddp-torch, zero1, zero2, fsdp or fsdp-torch: train on the ranks torchrun "
                "started (with --nproc-per-node N this command starts them); see "
                "docs/stage-4-parallel.md",
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


# --- mini-llm align (stage 5) ----------------------------------------------------------------
ALIGN_SKIP = ("tokenizer", "compile", "nvtx", "sample_tokens", "activation_checkpointing", "kernels")


def cmd_align_data(args):
    Path(args.out).mkdir(parents=True, exist_ok=True)
    BUILDERS[args.dataset](args.out)
    print(f"wrote {args.dataset} JSONL files into {args.out}/")


def align_settings(stage, args):
    return align_config(stage, given(args, TrainConfig, skip=ALIGN_SKIP))


def cmd_align_sft(args):
    sft(align_settings("sft", args), args.base, args.val_data, args.truncate, args.limit)


def cmd_align_reward(args):
    train_reward_model(align_settings("reward", args), args.base, args.val_data, args.truncate, args.limit,
                       args.center_rewards_coefficient)


def cmd_align_dpo(args):
    dpo(align_settings("dpo", args), args.base, args.beta, args.reference, args.loss_type,
        args.label_smoothing, args.val_data, args.truncate, args.limit)


def cmd_align_pairs(args):
    write_pairs(args.model, args.prompts, args.pairs, args.out, args.seed, args.samples_per_prompt, args.bt_scale)


def cmd_align_eval(args):
    evaluate_runs(args.models, args.reference, args.prompts, args.out, args.plot, args.max_prompts,
                  args.samples_per_prompt, args.seed)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def add_align_parsers(sub):
    align = sub.add_parser("align", help="stage 5: SFT, reward model, DPO, measured against a gold reward")
    cmds = align.add_subparsers(dest="align_command", required=True)

    p = cmds.add_parser("data", help="write the align JSONL files from the shipped corpora")
    p.add_argument("dataset", choices=("shakespeare", "gsm8k", "orca"))
    p.add_argument("--out", default="out/align-data")
    p.set_defaults(func=cmd_align_data)

    def trainer(name, help, func, data_help):
        p = cmds.add_parser(name, help=help)
        p.add_argument("--base", required=True, help="the run (or checkpoint) to start from")
        p.add_argument("--val-data", help="held-out lines (default: the last 10%% of --data)")
        p.add_argument("--limit", type=int, help="use the first N lines of --data only")
        p.add_argument("--truncate", action="store_true", help="cut examples longer than the context "
                       "(the prompt's start, the response's end) instead of refusing them")
        p.add_argument("--data", required=True, help=data_help)
        add_dataclass_flags(p, TrainConfig, skip=(*ALIGN_SKIP, "data"))
        p.set_defaults(func=func)
        return p

    trainer("sft", "supervised fine-tuning on {prompt, response} lines", cmd_align_sft,
            "JSONL of {\"prompt\", \"response\"}")
    p = trainer("reward", "a reward model (Bradley-Terry) on {prompt, chosen, rejected} lines",
                cmd_align_reward, "JSONL of {\"prompt\", \"chosen\", \"rejected\"}")
    p.add_argument("--center-rewards-coefficient", type=float, help="TRL's reward centering (e.g. 0.01)")
    p = trainer("dpo", "direct preference optimization on {prompt, chosen, rejected} lines",
                cmd_align_dpo, "JSONL of {\"prompt\", \"chosen\", \"rejected\"}")
    p.add_argument("--beta", type=float, default=0.1, help="the KL penalty's strength (default 0.1)")
    p.add_argument("--reference", help="the frozen reference (default: --base)")
    p.add_argument("--loss-type", default="sigmoid", choices=("sigmoid", "ipo"))
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cDPO: labels flipped with this probability")

    p = cmds.add_parser("pairs", help="sample answer pairs from a model, labelled by the gold reward")
    p.add_argument("--model", required=True, help="the run to sample from (the SFT model)")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\" (distinct prompts are used in turn)")
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--samples-per-prompt", type=int, default=16)
    p.add_argument("--bt-scale", type=float, help="noisy labels: P(a preferred) = sigmoid(S (r_a - r_b))")
    p.add_argument("--out", required=True, help="the JSONL to write (must not exist)")
    p.set_defaults(func=cmd_align_pairs)

    p = cmds.add_parser("eval", help="gold reward and KL to a reference of each model's samples")
    p.add_argument("--models", nargs="+", required=True, help="runs to evaluate")
    p.add_argument("--reference", required=True, help="the run the KL is measured against (the SFT model)")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\"")
    p.add_argument("--max-prompts", type=int, default=24)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", required=True, help="JSONL, one record per model (must not exist)")
    p.add_argument("--plot", help="reward-vs-KL PNG")
    p.set_defaults(func=cmd_align_eval)


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
    add_training_commands(sub)
    add_systems_commands(sub)
    add_stage_commands(sub)
    add_scaling_commands(sub)
    add_align_parsers(sub)
    return parser


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
    p.add_argument("--parallel", choices=STRATEGY_NAMES, help="per rank under this data-parallel "
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


def add_stage_commands(sub):
    """scratch (stage F) and tokenizer (stage 1)."""
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


def add_scaling_commands(sub):
    """costs and scaling fit / sweep / check (stage 4)."""
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


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # the command, for result files
    try:
        status = args.func(args) or 0
    except MiniLLMError as e:
        rank = f"rank {os.environ['RANK']}: " if "RANK" in os.environ else ""  # under torchrun
        print(f"mini-llm: error: {rank}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mini-llm: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
