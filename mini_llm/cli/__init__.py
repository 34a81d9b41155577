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
    mini-llm align data|sft|pairs|reward|dpo|eval ...                          (stage 5)

One module per group of commands: training.py, systems.py, stages.py, scaling.py, align.py;
common.py has what they share.

Errors the user can fix (bad settings, missing data, broken checkpoints, unknown kernels) are
printed as one line and exit with status 2. Outputs are checked before any work and never
replace an existing file unless --force is given (mini_llm/files.py).
"""

import argparse
import os
import sys

from ..errors import MiniLLMError
from .align import add_align_parsers
from .scaling import add_scaling_commands
from .stages import add_stage_commands
from .systems import add_systems_commands
from .training import add_training_commands


def build_parser():
    parser = argparse.ArgumentParser(prog="mini-llm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_training_commands(sub)
    add_systems_commands(sub)
    add_stage_commands(sub)
    add_scaling_commands(sub)
    add_align_parsers(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # the command, for result files
    try:
        status = args.func(args) or 0
    except MiniLLMError as e:
        rank = f"rank {os.environ['RANK']}: " if "RANK" in os.environ else ""  # under torchrun
        # One write, newline included: the ranks of a parallel run share stderr, and a line
        # written in two pieces can be cut by another rank's.
        sys.stderr.write(f"mini-llm: error: {rank}{e}\n")
        return 2
    except KeyboardInterrupt:
        print("mini-llm: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
    return status

