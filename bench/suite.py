"""`mini-llm bench` (or `python -m bench` from the repository): the whole suite in one command.

    mini-llm bench --shapes quick                      # every op x backend, then end to end
    mini-llm bench --ops attention --backends torch,triton --dtype bfloat16 --shapes full
    mini-llm bench --no-e2e --json results.json

Writes results.json, results.md and roofline.png into --out (default out/bench).
"""

import datetime
import subprocess
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mini_llm import nvtx, ops
from mini_llm.errors import ConfigError
from mini_llm.files import atomic_write_bytes, check_output_file, check_output_folder
from mini_llm.presets import default_preset, get_preset

from . import report
from .ceilings import ceilings, describe, over_ceiling
from .e2e import run_e2e
from .run import DTYPES, PASSES, count_steps, parse_list, run_ops
from .specs import SHAPE_SETS, SPECS


def add_arguments(p):
    p.add_argument("--ops", help=f"comma-separated (default: all): {', '.join(SPECS)}")
    p.add_argument("--backends", help=f"comma-separated (default: all): {', '.join(ops.BACKENDS)}")
    p.add_argument("--dtype", help=f"comma-separated: {', '.join(DTYPES)} "
                   "(default: bfloat16 on a GPU, float32 on a CPU)")
    p.add_argument("--shapes", default="quick", help="quick (model-sized, odd), full (large) or "
                   "headline (the shapes the kernel targets name)")
    p.add_argument("--passes", help=f"comma-separated (default: both): {', '.join(PASSES)}")
    p.add_argument("--kernels", default="torch", help="kernel set for the end-to-end rows")
    p.add_argument("--e2e-preset", help="model for the end-to-end rows (default: shakespeare-char "
                   "on a GPU, shakespeare-char-cpu otherwise)")
    p.add_argument("--no-e2e", action="store_true", help="op rows only")
    p.add_argument("--out", default="out/bench", help="folder for results.json/.md and roofline.png")
    p.add_argument("--json", help="also write the JSON here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.add_argument("--remeasure-ceilings", action="store_true", help="ignore the cached limits")
    p.add_argument("--nvtx", action="store_true", help="emit NVTX ranges (for Nsight)")


def _versions():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:  # no git: the results still count, without a commit
        commit = None
    return {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "git_commit": commit}


def main(args):
    # The outputs are checked first: a suite run takes minutes, and its rows must not be lost
    # at the end to a path that was never writable.
    out = check_output_folder(args.out)
    if args.json:
        check_output_file(args.json, force=args.force)  # a file elsewhere: never replaced unasked
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    op_names = parse_list(args.ops, list(SPECS), "op")
    backends = parse_list(args.backends, list(ops.BACKENDS), "backend")
    default_dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtypes = parse_list(args.dtype or default_dtype, list(DTYPES), "dtype")
    passes = parse_list(args.passes, list(PASSES), "pass")
    if args.shapes not in SHAPE_SETS:
        raise ConfigError(f"unknown shape set {args.shapes!r}; choose from {', '.join(SHAPE_SETS)}")
    preset = args.e2e_preset or default_preset()
    get_preset(preset)
    ops.parse(args.kernels)  # a bad kernel set fails now, not after the op rows
    if args.nvtx:
        nvtx.enable()

    limits = ceilings(device, remeasure=args.remeasure_ceilings)
    with tqdm(total=count_steps(op_names, args.shapes, dtypes, passes), unit="case",
              desc="ops", disable=None) as bar:
        rows = run_ops(op_names, backends, dtypes, args.shapes, passes, device, limits, bar.update)
    e2e = [] if args.no_e2e else run_e2e(preset, args.kernels, device, limits)
    over = over_ceiling(rows, e2e)

    meta = {"device": limits["device"], **_versions(), "date": datetime.date.today().isoformat(),
            "command": "mini-llm " + " ".join(args.argv), "ceilings": limits,
            "shapes": args.shapes, "over_ceiling": over}
    out.mkdir(parents=True, exist_ok=True)
    results = report.to_json(rows, e2e, meta).encode()
    for path in [out / "results.json", *([args.json] if args.json else [])]:
        atomic_write_bytes(path, results)
    atomic_write_bytes(out / "results.md", report.markdown(rows, e2e, meta).encode())
    report.roofline(rows, meta, out / "roofline.png")
    report.print_tables(rows, e2e, meta)
    failed = [r for r in rows if r.status in ("FAILED", "error")]
    if over:
        print(f"WARNING: {len(over)} rows above 100% of a ceiling ({', '.join(over[:3])}"
              f"{', ...' if len(over) > 3 else ''}): the ceilings ({describe(limits)}) are too low; "
              "rerun with --remeasure-ceilings on an idle machine", file=sys.stderr)
    print(f"wrote {out}/results.json, results.md, roofline.png"
          + (f"; {len(failed)} rows FAILED or in error" if failed else ""))
    return 1 if failed else 0
