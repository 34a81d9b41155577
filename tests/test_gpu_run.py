"""The GPU run's plumbing, on a CPU (bench/gpu_run.sh, gpu_prepare.py, gpu_results.py, probe.py,
and the object cache key of mini_llm/ops/cuda/jit.py they rely on).

No GPU and no real compiler: a fake nvcc stands in (it writes a placeholder for every -o), so
the prepare step, the object lookup and the whole script run in seconds; GPU_RUN_DRY=1 replaces
the script's GPU commands with stand-ins, and everything else in it runs for real.

    python -m pytest -q tests/test_gpu_run.py
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import triton
import triton.language as tl

from mini_llm.bench import gpu_prepare, gpu_results, probe, report
from mini_llm.bench.run import Row
from mini_llm.ops.cuda import jit

ROOT = Path(__file__).resolve().parents[1]
FAKE_NVCC = """#!/bin/sh
if [ "$1" = --version ]; then echo "Cuda compilation tools, release {release}, V{release}.{patch}"; exit 0; fi
out=""
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
echo "fake build" >"$out"
echo "ptxas info    : 0 bytes gmem" >&2
"""


def fake_cuda(root, release="13.0", patch="88"):
    """A CUDA 'toolkit' at root whose nvcc writes placeholder files. Returns its nvcc."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime_api.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(FAKE_NVCC.format(release=release, patch=patch))
    nvcc.chmod(0o755)
    return str(nvcc)


def copy_tree(dest):
    """The checkout's files (tracked and new, not ignored) at another path: what the device
    tool sends to the GPU machine."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_object_key_holds_no_path_and_no_patch_level(tmp_path):
    """Objects built in one checkout are found from another at another path (another machine),
    with another patch level of the same nvcc release; a new release or a header edit misses."""
    nvcc = fake_cuda(tmp_path / "cuda")
    build = tmp_path / "build"
    with jit.build_lock(build):
        built = jit.compile_objects(nvcc, ROOT / "csrc", build)
    assert len(built) == len(list((ROOT / "csrc").glob("*.cu"))) > 0
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ROOT / "csrc", elsewhere / "csrc")
    assert jit.missing_objects(nvcc, elsewhere / "csrc", build) == []
    assert jit.missing_objects(fake_cuda(tmp_path / "patch", patch="48"), elsewhere / "csrc", build) == []
    assert jit.missing_objects(fake_cuda(tmp_path / "next", release="13.1"), elsewhere / "csrc", build) != []
    header = next((elsewhere / "csrc").glob("*.h"))
    header.write_text(header.read_text() + "\n// edited\n")
    assert len(jit.missing_objects(nvcc, elsewhere / "csrc", build)) == len(built)


def run_script(tree, env, *args):
    done = subprocess.run(["bash", str(tree / "bench" / "gpu_run.sh"), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def stages(tree, mode):
    return {row[0]: row for row in gpu_results.stage_rows(tree / "out" / "gpu_run" / mode)}


def test_dry_run_of_the_whole_script(tmp_path, corpus, monkeypatch):
    """Prepare here, run from a copy of the tree elsewhere: the prebuilt objects are found by
    their key, a stage that overruns its box is cut and the next one runs, the results folder
    keeps the tool's limits, and the summary comes last; then the second command."""
    cuda = tmp_path / "cuda"
    fake_cuda(cuda)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus, data / "tinyshakespeare.txt")
    monkeypatch.setenv("CUDA_HOME", str(cuda))
    monkeypatch.setenv("MINI_LLM_DATA_DIR", str(data))
    monkeypatch.setenv("MINI_LLM_BUILD_DIR", str(tmp_path / "local-build"))
    tree = copy_tree(tmp_path / "gpu-machine")
    assert gpu_prepare.main(["--carry", str(tree / ".gpu-carry")]) == 0

    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "results"), "GPU_RUN_DRY": "1",
           "GPU_RUN_DRY_SLOW": "probe", "GPU_RUN_BOX_probe": "2", "GPU_RUN_WORKERS": "2"}
    printed = run_script(tree, env)
    first = stages(tree, "first")
    assert {name: row[1] for name, row in first.items()} == {
        "versions": "ok", "build": "ok", "tests": "ok", "sanitize": "ok", "probe": "TIMED OUT", "train": "ok"}
    assert int(first["probe"][2]) < 20  # cut at its 2 s box (the stand-in takes 60)
    cu_files = len(list((tree / "csrc").glob("*.cu")))
    build_log = (tree / "out" / "gpu_run" / "first" / "logs" / "build.log").read_text()
    assert f"prebuilt objects: {cu_files}/{cu_files} current" in build_log

    out = tmp_path / "results"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gpu_results.MAX_FILES and all(p.is_file() for p in out.iterdir())
    assert {"summary.txt", "run.log", "logs.tar.gz", "pytest_gpu.xml"} <= set(files)
    assert all((out / f).stat().st_size <= gpu_results.FILE_LIMIT for f in files)
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"logs/probe.log", "logs/tests.log", "logs/train.log"} <= set(tar.getnames())
    summary = (out / "summary.txt").read_text()
    assert "probe      TIMED OUT" in summary and "training (val loss" in summary
    assert printed.rstrip().endswith(summary.rstrip().splitlines()[-1])  # printed last

    env.update(OUT=str(tmp_path / "results-rerun"), GPU_RUN_BOX_train_full="1")
    run_script(tree, env, "--rerun")
    rerun = stages(tree, "rerun")
    assert rerun["rerun"][1] == "ok" and rerun["train_full"][1] == "TIMED OUT"
    assert "build" not in rerun  # the machine is still set up from the first command


def test_results_summary_and_packaging(tmp_path, monkeypatch):
    """A failed test is named in the summary with the probe's rows and the targets they meet or
    miss; a log too big for the tool's 16 MiB is cut; the Triton cache keeps its binaries and
    metadata, not its IR."""
    state, out = tmp_path / "first", tmp_path / "out"
    (state / "logs").mkdir(parents=True)
    (state / "work" / "bench").mkdir(parents=True)
    (state / "stages.tsv").write_text("tests\tFAILED (exit 1)\t100\t210\tlogs/tests.log\n")
    (state / "logs" / "tests.log").write_bytes(os.urandom(17 * 2**20))  # does not compress
    (state / "work" / "pytest_gpu.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="2" failures="1" errors="0" skipped="0" time="3.5">'
        '<testcase classname="tests.test_cuda_attention" name="test_fwd[bf16]"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cuda_attention" name="test_fwd[fp32]"/></testsuite></testsuites>')
    row = Row("attention", "triton", "B1 nh16 T16384 hs128", "bfloat16", "fwd", ms=2.5, speedup_vs_torch=0.93,
              pct_bandwidth=1.0, pct_matmul=40.0)
    meta = {"device": "NVIDIA H100 80GB HBM3", "ceilings": {"copy_gb_s": 3000.0, "matmul_tflop_s": 790.0}}
    (state / "work" / "bench" / "results.json").write_text(report.to_json([row], [], meta))
    quant = {"backend": "cuda", "M": 1, "K": 4096, "N": 4096, "bits": 8, "group": 4096, "status": "ok",
             "ms": 0.02, "bf16_ms": 0.024, "speedup_vs_bf16": 1.2}
    (state / "work" / "bench" / "quant_vs_bf16_gpu.json").write_text(json.dumps({"meta": meta, "rows": [quant]}))
    cache = tmp_path / "triton"
    for name in ("ab/k.cubin", "ab/k.json", "ab/__grp__k.json", "ab/k.ptx", "ab/k.llir"):
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text(name)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))

    gpu_results.main([str(state), str(out), "--final"])
    summary = (out / "summary.txt").read_text()
    assert "tests/test_cuda_attention.py::test_fwd[bf16]" in summary
    assert "2 tests, 1 failed" in summary and "0.93x torch" in summary and "H100" in summary
    assert "logs cut to their last MiB" in summary
    assert "[met] triton attention fwd >= 0.9x SDPA: 0.93 (worst: B1 nh16 T16384 hs128)" in summary
    assert "[MISSED] cuda int8 >= 1.6x bf16 at M <= 16: 1.20" in summary
    assert "[not measured] cuda attention fwd >= 0.5x SDPA" in summary
    assert len(list(out.iterdir())) <= gpu_results.MAX_FILES
    assert all(f.stat().st_size <= gpu_results.FILE_LIMIT for f in out.iterdir())
    with tarfile.open(out / gpu_results.TRITON_CACHE) as tar:
        assert sorted(tar.getnames()) == ["ab/__grp__k.json", "ab/k.cubin", "ab/k.json"]
    assert json.loads((out / "bench.json").read_text())["meta"]["device"] == meta["device"]


def test_probe_measures_what_it_warms():
    """The probe's commands parse, and its parallel compile covers every Triton case it times."""
    from mini_llm.cli import build_parser

    from mini_llm.bench import quant_vs_bf16
    from mini_llm.bench.run import _passes
    from mini_llm.bench.specs import SPECS, cases

    args = build_parser().parse_args(probe.suite_argv("out", "torch,triton"))
    assert args.shapes == "headline" and args.no_e2e
    units = probe.warm_units()
    suite = [u for u in units if u[0] == "suite"]
    assert len(suite) == sum(len(cases(op, "headline")) * len(_passes(SPECS[op], ["fwd", "fwd+bwd"]))
                             for op in probe.SUITE_OPS) > 0
    quant = [u for u in units if u[0] == "quant"]
    sizes, tokens = probe.QUANT_SIZES.split(","), probe.QUANT_TOKENS.split(",")
    assert len(quant) == len(quant_vs_bf16.FORMATS) * len(tokens) * len(sizes)


@triton.jit
def _kernel(x_ptr, N, GROUP, BLOCK_K: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK_K), tl.zeros((BLOCK_K,), tl.float32))


@pytest.mark.parametrize("mode", ["all", "first"])
def test_autotune_knob(monkeypatch, mode):
    """MINI_LLM_AUTOTUNE=first: one config per key, the first that the kernel's prune keeps
    (an int4 block holding whole groups of 128), else the first; all: every config."""
    from mini_llm.kernels import autotune

    monkeypatch.setenv(autotune.KNOB, mode)
    configs = [triton.Config({"BLOCK_K": k}) for k in (64, 128, 256)]

    def whole_groups(configs, named_args, **kwargs):
        return [c for c in configs if c.kwargs["BLOCK_K"] % named_args["GROUP"] == 0]

    plain = autotune.autotune(configs, key=["N"])(_kernel)
    pruned = autotune.autotune(configs, key=["N"], prune=whole_groups)(_kernel)
    kept = pruned.early_config_prune(pruned.configs, {"GROUP": 128})
    if mode == "first":
        assert len(plain.configs) == 1 and [c.kwargs["BLOCK_K"] for c in kept] == [128]
    else:
        assert len(plain.configs) == 3 and [c.kwargs["BLOCK_K"] for c in kept] == [128, 256]


def test_cuda_tests_wait_for_the_background_build(tmp_path, monkeypatch):
    """gpu_run.sh builds the extension while the tests start: the CUDA tests' fixture goes on
    once its status file says 0, and fails at once (no second build per process) otherwise."""
    from conftest import wait_for_background_build

    status = tmp_path / "binding.status"
    monkeypatch.setenv("MINI_LLM_CUDA_BUILD_STATUS", str(status))
    status.write_text("0\n")
    wait_for_background_build()
    status.write_text("1\n")
    with pytest.raises(pytest.fail.Exception, match=r"failed \(1\)"):
        wait_for_background_build()
    status.unlink()
    with pytest.raises(pytest.fail.Exception, match="no status"):
        wait_for_background_build(limit_s=0)
