"""JIT build of the CUDA extension from csrc/, for when no prebuilt mini_llm._C is installed.

Two steps, so that a machine with nvcc but no GPU (and a CPU-only PyTorch, which ships no CUDA
headers) can build it too:

1. every csrc/*.cu (not csrc/standalone/) -> an object, by nvcc directly, with the flags of
   build_flags.py. Each object is cached under a hash of its source, every csrc header (names
   and contents), the flags and nvcc's release, so editing one kernel recompiles only that file.
   Nothing in the hash depends on where the checkout or the build dir is, or on PyTorch (the
   objects include no PyTorch header): objects built on one machine are found on another
   (bench/gpu_prepare.py sends them to the GPU machine). ptxas's -v report (registers, spills,
   shared memory per kernel and arch) is kept beside each object and gathered in ptxas.txt.
2. csrc/bindings.cpp (the only file that includes <torch/extension.h>) -> the extension module,
   by torch.utils.cpp_extension.load (ninja), linked with the objects and libcudart.

Build dir: $MINI_LLM_BUILD_DIR, else ~/.cache/mini_llm/build (or $XDG_CACHE_HOME/mini_llm/build).
A file lock in it keeps two processes from building at once.
"""

import concurrent.futures
import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from ...errors import KernelSelectionError
from . import build_flags

EXTENSION_NAME = "mini_llm_C"
PTXAS_REPORT = "ptxas.txt"


class CudaBuildError(KernelSelectionError):
    """The CUDA extension cannot be built here: no nvcc, no csrc/ folder, or a compile error."""


def csrc_dir(path=None):
    """csrc/ (by default the repository root's: there in a source checkout / editable install
    only), checked to hold bindings.cpp."""
    path = Path(path) if path else Path(__file__).resolve().parents[3] / "csrc"
    if not (path / "bindings.cpp").is_file():
        raise CudaBuildError(
            f"cannot JIT-build the CUDA extension: no csrc/ folder at {path} (the sources ship only "
            "with a source checkout; install it editable, `pip install -e .`, or build the "
            "extension ahead of time with `pip install --no-build-isolation -e .` where torch has CUDA)")
    return path


def build_dir():
    if os.environ.get("MINI_LLM_BUILD_DIR"):
        return Path(os.environ["MINI_LLM_BUILD_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mini_llm" / "build"


def find_nvcc():
    """(nvcc, CUDA root): $CUDA_HOME / $CUDA_PATH first, else nvcc on the PATH, whose root holds
    include/cuda_runtime_api.h (it may be a wrapper script, so /usr/local/cuda is tried too)."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    for root in filter(None, roots):
        if (Path(root) / "bin" / "nvcc").is_file():
            nvcc = str(Path(root) / "bin" / "nvcc")
            break
    if nvcc is None:
        raise CudaBuildError("cannot build the CUDA extension: nvcc not found (put the CUDA "
                             "toolkit's bin/ on the PATH or set CUDA_HOME)")
    roots += [Path(nvcc).resolve().parents[1], "/usr/local/cuda"]
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return nvcc, Path(root)
    raise CudaBuildError(f"found {nvcc} but no CUDA headers (include/cuda_runtime_api.h) beside "
                         "it; set CUDA_HOME to the toolkit's root")


@functools.lru_cache
def nvcc_release(nvcc):
    """'release 13.0' from `nvcc --version`: objects of one release link with any of its
    patch levels' runtimes, so the patch level (V13.0.88) and build date stay out of the key."""
    text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release \d+\.\d+", text)
    if release is None:
        raise CudaBuildError(f"cannot read nvcc's release from `{nvcc} --version`:\n{text}")
    return release.group()


def _fingerprint(nvcc, source, headers, flags):
    h = hashlib.sha256(nvcc_release(nvcc).encode())
    for path in (source, *headers):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:16]


def diagnostics(output):
    """nvcc's output without ptxas's per-kernel resource lines: the errors and warnings."""
    keep = [line for line in output.splitlines()
            if not line.startswith("ptxas info") and "bytes stack frame" not in line]
    return "\n".join(keep).strip()


# nvcc runs inside csrc/ on relative names, so the flags (part of the key) hold no absolute path.
OBJECT_FLAGS = [*build_flags.NVCC_FLAGS, "-I."]


def object_paths(nvcc, source, obj_dir):
    """(obj_dir/<stem>-<hash>.o, obj_dir/<stem>-<hash>.ptxas.txt): where source.cu's object is
    cached, the hash over the source, every header beside it, the flags and nvcc's release."""
    headers = sorted(p for ext in ("*.h", "*.cuh") for p in source.parent.glob(ext))
    stem = f"{source.stem}-{_fingerprint(nvcc, source, headers, OBJECT_FLAGS)}"
    return obj_dir / f"{stem}.o", obj_dir / f"{stem}.ptxas.txt"


def missing_objects(nvcc, csrc, directory):
    """The csrc/*.cu whose current object is not in directory/obj (those a build compiles)."""
    return [s for s in sorted(csrc.glob("*.cu"))
            if not all(p.is_file() for p in object_paths(nvcc, s, directory / "obj"))]


def compile_object(nvcc, source, obj_dir, verbose=False):
    """source.cu -> its object_paths(), skipped when that object exists. Returns them."""
    csrc = source.parent
    obj, log = object_paths(nvcc, source, obj_dir)
    if obj.is_file() and log.is_file():
        return obj, log
    tmp = obj.with_suffix(f".{os.getpid()}.tmp.o").resolve()
    cmd = [nvcc, "-c", source.name, "-o", str(tmp), *OBJECT_FLAGS]
    if verbose:
        print(f"(cd {csrc} && {' '.join(cmd)})", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=csrc)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise CudaBuildError(f"nvcc failed on {source.name}:\n{diagnostics(done.stdout + done.stderr)}")
    log.write_text(done.stdout + done.stderr)  # ptxas -v writes its report to stderr
    tmp.rename(obj)
    for stale in obj_dir.glob(f"{source.stem}-*"):  # older versions of this file
        if stale.name.split("-", 1)[0] == source.stem and stale not in (obj, log):
            stale.unlink(missing_ok=True)
    return obj, log


def compile_objects(nvcc, csrc, directory, verbose=False):
    """Every csrc/*.cu -> its cached object in directory/obj (compile_object), in parallel;
    ptxas's reports gathered in directory/ptxas.txt. Returns the (object, ptxas log) pairs.
    The caller holds the build lock."""
    obj_dir = directory / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(csrc.glob("*.cu"))
    jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)  # MAX_JOBS: as torch's builds
    with concurrent.futures.ThreadPoolExecutor(max(1, min(jobs, len(sources)))) as pool:
        built = list(pool.map(lambda s: compile_object(nvcc, s, obj_dir, verbose), sources))
    (directory / PTXAS_REPORT).write_text("".join(log.read_text() for _, log in built))
    return built


def build_lock(directory):
    import filelock

    directory.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(directory / "build.lock"))


def build(csrc=None, directory=None, verbose=False):
    """Compile csrc/ into the extension module and return it (imported). Raises CudaBuildError."""
    import torch.utils.cpp_extension as cpp

    csrc = csrc_dir(csrc)
    directory = Path(directory) if directory else build_dir()
    nvcc, cuda_root = find_nvcc()
    ext_dir = directory / "ext"
    ext_dir.mkdir(parents=True, exist_ok=True)
    with build_lock(directory):
        built = compile_objects(nvcc, csrc, directory, verbose)
        lib = next((cuda_root / d for d in ("lib64", "lib", "targets/x86_64-linux/lib")
                    if (cuda_root / d / "libcudart.so").exists()), cuda_root / "lib64")
        try:
            return cpp.load(
                name=EXTENSION_NAME,
                sources=[str(csrc / "bindings.cpp")],
                extra_cflags=[*build_flags.CXX_FLAGS, *build_flags.CXX_WERROR, "-isystem",
                              str(cuda_root / "include")],
                extra_include_paths=[str(csrc)],
                extra_ldflags=[*(str(o) for o, _ in built), f"-L{lib}", f"-Wl,-rpath,{lib}", "-lcudart"],
                build_directory=str(ext_dir),
                verbose=verbose,
            )
        except (RuntimeError, subprocess.CalledProcessError) as e:  # the message holds the compiler's
            raise CudaBuildError(f"building csrc/bindings.cpp failed:\n{e}") from e


def ptxas_report_path(directory=None):
    return Path(directory or build_dir()) / PTXAS_REPORT
