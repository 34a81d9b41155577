"""python -m mini_llm.ops.cuda [-v] [--fail-on-spill]: JIT-build the CUDA extension from csrc/
(into $MINI_LLM_BUILD_DIR or ~/.cache/mini_llm/build) and print ptxas's resources per kernel and
arch. With --fail-on-spill the exit status is 1 if any kernel spills registers to local memory."""

import argparse
import sys
import time

from . import jit, ptxas
from .jit import CudaBuildError


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mini_llm.ops.cuda", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    parser.add_argument("--fail-on-spill", action="store_true", help="exit 1 if any kernel spills")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        jit.build(verbose=args.verbose)
    except CudaBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = jit.ptxas_report_path()
    rows = ptxas.parse(path.read_text())
    print(ptxas.table(rows))
    print(f"\n{len(rows)} kernel builds; extension ready in {time.perf_counter() - start:.1f} s; "
          f"ptxas report: {path}")
    spilling = [r for r in rows if r.spills]
    if spilling:
        names = [ptxas.short_name(n) for n in ptxas.demangle(r.name for r in spilling)]
        print(f"{len(spilling)} kernel builds spill registers to local memory: "
              + ", ".join(f"{n} ({r.arch})" for n, r in zip(names, spilling)))
    return 1 if spilling and args.fail_on_spill else 0


if __name__ == "__main__":
    sys.exit(main())
