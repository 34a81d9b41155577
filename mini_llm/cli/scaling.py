"""mini-llm costs and scaling sweep / fit / check (stage 4)."""

import torch

from ..bench.ceilings import ceilings
from ..bench.timing import median_ms
from ..errors import MiniLLMError
from ..files import check_output_folder
from ..model import GPTConfig
from ..presets import default_preset, get_preset
from ..profile import synthetic_training_of
from ..scaling.costs import format_costs, model_costs
from ..scaling.fit import fit_table, format_summary
from ..scaling.sweep import (
    Settings,
    check_prediction,
    plan_grid,
    plan_isoflop,
    run_sweep,
)
from ..train import resolve_device
from .common import HELP, add_dataclass_flags, given


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
