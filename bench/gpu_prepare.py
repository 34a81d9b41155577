"""Prepare the kernels' GPU run (bench/gpu_run.sh) on the CPU machine, where compiling is free:

    python -m mini_llm.bench.gpu_prepare [--carry .gpu-carry] [--triton-cache PATH]

Everything the GPU machine must not spend its minutes on goes into one gitignored folder, sent
along with the working tree (the device tool's `carry`; 64 MiB in all):

  build.tar.gz       obj/: every csrc/*.cu compiled by nvcc (the JIT build's own object cache,
                     whose key holds no path and no PyTorch version: there only the binding
                     compiles); standalone/<op>: csrc/standalone/<op>.cu linked with its op's
                     objects, for compute-sanitizer
  data/              Tiny Shakespeare, for the training stage
  commit.txt         the commit sent, for the results
  triton-cache.tar.gz  a previous run's compiled Triton kernels, when given: compiles skipped

then prints the device tool's call. nvcc's release must be the GPU machine's (13.0): the
objects' key holds it, and a mismatch means every kernel compiles there again.
"""

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mini_llm.data import TINY_SHAKESPEARE
from mini_llm.files import fetch
from mini_llm.ops.cuda import build_flags, jit

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 60 * 2**20  # the tool's 64 MiB, less the tracked tree (~2 MiB) and some margin
RUN_COMMAND = "bash bench/gpu_run.sh"


def build_objects(staging, verbose):
    """csrc/*.cu -> staging/obj, through jit's cache: files unchanged since the local build
    ($MINI_LLM_BUILD_DIR, e.g. CI's .ci-build) are copied from it, not compiled again."""
    nvcc, _ = jit.find_nvcc()
    local = jit.build_dir()
    with jit.build_lock(local):
        built = jit.compile_objects(nvcc, jit.csrc_dir(), local, verbose)
    (staging / "obj").mkdir(parents=True)
    for obj, log in built:
        for path in (obj, log):
            shutil.copy2(path, staging / "obj" / path.name)
    shutil.copy2(local / jit.PTXAS_REPORT, staging / jit.PTXAS_REPORT)
    print(f"{len(built)} objects ({jit.nvcc_release(nvcc)})")
    return nvcc, [staging / "obj" / obj.name for obj, _ in built]


def op_objects(op, objects):
    """The objects of csrc/<op>.cu and csrc/<op>_*.cu: the kernels standalone/<op>.cu calls."""
    stems = [o.name.rsplit("-", 1)[0] for o in objects]  # <stem>-<hash>.o
    return [o for o, stem in zip(objects, stems) if stem == op or stem.startswith(f"{op}_")]


def build_standalone(nvcc, objects, staging, verbose):
    """Each csrc/standalone/<op>.cu -> staging/standalone/<op>, compiled with the extension's
    nvcc flags and linked with its objects: compute-sanitizer checks the code the tests run."""
    out = staging / "standalone"
    out.mkdir(parents=True)
    for source in sorted((ROOT / "csrc" / "standalone").glob("*.cu")):
        cmd = [nvcc, *build_flags.NVCC_FLAGS, "-Icsrc", str(source.relative_to(ROOT)),
               *map(str, op_objects(source.stem, objects)), "-o", str(out / source.stem)]
        if verbose:
            print(" ".join(cmd), flush=True)
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise jit.CudaBuildError(f"nvcc failed on {source}:\n{jit.diagnostics(done.stdout + done.stderr)}")
    print(f"standalone programs: {', '.join(sorted(p.name for p in out.iterdir()))}")


def copy_data(carry):
    """Tiny Shakespeare, found as training finds it ($MINI_LLM_DATA_DIR, the cache, a download):
    the GPU machine has no network."""
    out = carry / "data"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fetch(TINY_SHAKESPEARE), out / TINY_SHAKESPEARE.name)
    print(f"data: {TINY_SHAKESPEARE.name}")


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def commit():
    """The commit the run tests, for the results (the device gets a copy of the tree, no .git)."""
    dirty = " + uncommitted changes" if git("status", "--porcelain") else ""
    return f"commit {git('rev-parse', '--short', 'HEAD') or 'unknown'}{dirty}"


def prepare(carry, triton_cache, verbose):
    """Fill `carry`: build.tar.gz (obj/, ptxas.txt, standalone/: gzip takes the ~50 MB of
    objects and programs, two GPU architectures each, to ~12), data/, commit.txt and the
    Triton cache if given."""
    carry.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        nvcc, objects = build_objects(staging, verbose)
        build_standalone(nvcc, objects, staging, verbose)
        with tarfile.open(carry / "build.tar.gz", "w:gz") as tar:
            for name in ("obj", jit.PTXAS_REPORT, "standalone"):
                tar.add(staging / name, arcname=name)
    copy_data(carry)
    (carry / "commit.txt").write_text(commit() + "\n")
    (carry / "triton-cache.tar.gz").unlink(missing_ok=True)
    if triton_cache:
        shutil.copy2(triton_cache, carry / "triton-cache.tar.gz")
    total = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    print(f"{carry}: {total / 2**20:.1f} MiB")
    if total > CARRY_LIMIT:
        sys.exit(f"{carry} is over {CARRY_LIMIT / 2**20:.0f} MiB: the device tool would refuse it")


def check(directory):
    """On the GPU machine: are directory's objects those of this checkout (else jit compiles)?"""
    nvcc, _ = jit.find_nvcc()
    csrc = jit.csrc_dir()
    missing = jit.missing_objects(nvcc, csrc, directory)
    total = len(list(csrc.glob("*.cu")))
    print(f"prebuilt objects: {total - len(missing)}/{total} current in {directory} ({jit.nvcc_release(nvcc)})"
          + "".join(f"\n  not prebuilt: {s.name}" for s in missing))
    return 1 if missing else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--carry", default=str(ROOT / ".gpu-carry"), help="the folder to send along")
    p.add_argument("--triton-cache", help="triton-cache.tar.gz from an earlier run's results")
    p.add_argument("--check", metavar="BUILD_DIR", help="only check BUILD_DIR's objects (gpu_run.sh does)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the compiler commands")
    args = p.parse_args(argv)
    if args.check:
        return check(Path(args.check))
    carry = Path(args.carry)
    prepare(carry, args.triton_cache, args.verbose)
    carried = carry.resolve().relative_to(ROOT) if carry.resolve().is_relative_to(ROOT) else carry
    print("\nThe device tool's calls, from this checkout (the second within the machine's 30 s warm window):\n"
          f'  run(command="{RUN_COMMAND}", carry=["{carried}"], timeout_s=600)\n'
          f'  run(command="{RUN_COMMAND} --rerun", carry=["{carried}"], timeout_s=210)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
