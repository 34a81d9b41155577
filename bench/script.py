"""What the bench scripts (python -m mini_llm.bench.NAME) share: where their results go and how
they fail.

Results go to --out, by default out/bench-results/: the committed bench/results/ is written only
when named (--out bench/results), so running a script to try it never replaces the numbers the
docs quote. The folder is checked before the measuring starts, the files are written
atomically, and an error the user can fix is one line and exit status 2, not a traceback.
"""

import sys
from pathlib import Path

from mini_llm.errors import MiniLLMError
from mini_llm.files import atomic_write_bytes, check_output_folder

DEFAULT_OUT = "out/bench-results"


def add_out_flag(parser):
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the results (default: "
                        f"{DEFAULT_OUT}; the committed results are in bench/results: name it to "
                        "update them)")


def check_out(out):
    """Call before measuring: a path that cannot be written fails now, not after the run."""
    return check_output_folder(out)


def write_results(out, texts):
    """Write {file name: text} into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # checked by check_out
    for name, text in texts.items():
        atomic_write_bytes(out / name, text.encode())


def run(main, argv=None):
    """main(argv) as a script; returns the exit status."""
    try:
        return main(argv) or 0
    except MiniLLMError as e:
        print(f"{Path(sys.argv[0]).stem}: error: {e}", file=sys.stderr)
        return 2
