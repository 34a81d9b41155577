"""The CUDA build system (mini_llm/ops/cuda: jit.py, ptxas.py, __main__.py): the extension
builds from csrc/ with nvcc against whatever PyTorch is installed (CI: the CPU build, no GPU),
imports, exports every launcher bindings.cpp defines, each binding rejects CPU tensors with a
clear error, and ptxas's report lists every kernel for sm_80 and sm_90a. Needs nvcc (skipped
otherwise); the extension is built once per session by the `cuda_ext` fixture (tests/conftest.py).

    python -m pytest -q tests/test_cuda_build.py
"""

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from mini_llm.errors import KernelSelectionError
from mini_llm.ops import cuda
from mini_llm.ops.cuda import __main__ as cli
from mini_llm.ops.cuda import jit, ptxas

ARCHS = {"sm_80", "sm_90a"}
NORM_KERNELS = {"norm_forward_kernel", "norm_backward_kernel", "norm_param_grad_kernel"}
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"),
                                reason="nvcc not found")

SAMPLE_REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8mini_llm6kernelILi4EEEvPf' for 'sm_80'
ptxas info    : Function properties for _ZN8mini_llm6kernelILi4EEEvPf
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size, 4096 bytes smem, 364 bytes cmem[0]
ptxas info    : Compile time = 11.452 ms
ptxas info    : Function properties for _ZN8mini_llm6helperEv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_ZN8mini_llm6kernelILi4EEEvPf' for 'sm_90a'
ptxas info    : Function properties for _ZN8mini_llm6kernelILi4EEEvPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 364 bytes cmem[0]
"""


def test_ptxas_report_parses_into_rows():
    rows = ptxas.parse(SAMPLE_REPORT)
    assert [(r.arch, r.registers, r.spill_stores, r.spill_loads, r.stack, r.smem) for r in rows] == [
        ("sm_80", 255, 12, 8, 16, 4096), ("sm_90a", 40, 0, 0, 0, 0)]
    assert [r.spills for r in rows] == [True, False]
    assert ptxas.short_name("void mini_llm::(anonymous namespace)::k<float, 4>(mini_llm::Args<float>)") == "k<float, 4>"


def test_cli_prints_the_table_and_fails_on_spills_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINI_LLM_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(jit, "build", lambda verbose=False: None)  # the report below stands in
    (tmp_path / jit.PTXAS_REPORT).write_text(SAMPLE_REPORT)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(r"kernel<4>\s+sm_80\s+255\s+12\s+8\s+16\s+4096", out), out
    assert "spill registers" in out
    assert cli.main(["--fail-on-spill"]) == 1


def test_missing_nvcc_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with pytest.raises(cuda.CudaBuildError, match="nvcc not found"):
        jit.build(directory=tmp_path / "build")
    assert issubclass(cuda.CudaBuildError, KernelSelectionError)


def test_missing_csrc_is_a_clear_error(tmp_path):
    with pytest.raises(cuda.CudaBuildError, match="no csrc/ folder"):
        jit.csrc_dir(tmp_path / "csrc")


@needs_nvcc
def test_nvcc_errors_are_shown_and_objects_cached(tmp_path):
    nvcc, _ = jit.find_nvcc()
    source = tmp_path / "scale.cu"
    source.write_text("__global__ void scale(float* x) { x[threadIdx.x] *= 2.f; }\n")
    obj, log = jit.compile_object(nvcc, source, tmp_path)
    assert obj.is_file() and {r.arch for r in ptxas.parse(log.read_text())} == ARCHS
    built_at = obj.stat().st_mtime_ns
    assert jit.compile_object(nvcc, source, tmp_path) == (obj, log)  # cached: not rebuilt
    assert obj.stat().st_mtime_ns == built_at
    (tmp_path / "extra.h").write_text("#pragma once\n")  # a header beside it: a new hash
    assert jit.compile_object(nvcc, source, tmp_path)[0] != obj and not obj.exists()  # old one gone

    source.write_text("__global__ void scale(float* x) { x[threadIdx.x] *= undefined_factor; }\n")
    with pytest.raises(cuda.CudaBuildError, match=r"(?s)nvcc failed on scale\.cu.*undefined_factor"):
        jit.compile_object(nvcc, source, tmp_path)


def _defined_names():
    """The names csrc/bindings.cpp gives its functions (m.def("name", ...))."""
    return set(re.findall(r'm\.def\(\s*"(\w+)"', (jit.csrc_dir() / "bindings.cpp").read_text()))


def test_extension_exports_every_launcher(cuda_ext):
    assert {"norm_forward", "norm_backward"} <= _defined_names()
    missing = {name for name in _defined_names() if not callable(getattr(cuda_ext, name, None))}
    assert not missing, f"not exported by the extension: {missing}"


def _cpu_arguments(fn):
    """Arguments for a binding from its pybind11 signature: a small CPU tensor for every
    (optional) tensor, plain values (0, 1e-5, False, "") for the rest."""
    signature = fn.__doc__.splitlines()[0]
    params = re.match(r"\w+\((.*)\) ->", signature).group(1)
    args = []
    for param in filter(None, (p.strip() for p in re.split(r",\s*(?=\w+:)", params))):
        annotation = param.split(":", 1)[1].lower()  # pybind11 3 writes typing.SupportsFloat etc.
        if "tensor" in annotation:
            args.append(torch.randn(4, 64))
        elif "bool" in annotation:
            args.append(False)
        elif "float" in annotation:
            args.append(1e-5)
        elif "int" in annotation:
            args.append(0)
        elif annotation.strip() == "str":
            args.append("")
        else:
            pytest.fail(f"no CPU test argument for {param!r} in {signature}")
    return args


def test_every_binding_rejects_cpu_tensors(cuda_ext):
    for name in sorted(_defined_names()):
        fn = getattr(cuda_ext, name)
        with pytest.raises(RuntimeError) as caught:  # TORCH_CHECK's error: no crash, no launch
            fn(*_cpu_arguments(fn))
        assert re.search(r"cuda|must", str(caught.value), re.IGNORECASE), f"{name}: {caught.value}"


def test_ptxas_report_lists_every_kernel_for_both_archs(cuda_ext):
    if cuda.prebuilt():
        pytest.skip("mini_llm._C was built ahead of time: no JIT ptxas report (MINI_LLM_CUDA_JIT=1 makes one)")
    obj_dir = jit.build_dir() / "obj"
    for source in sorted(jit.csrc_dir().glob("*.cu")):
        logs = [p for p in obj_dir.glob(f"{source.stem}-*.ptxas.txt") if p.name.split("-")[0] == source.stem]
        assert len(logs) == 1, f"{source.name}: expected one ptxas log, found {logs}"
        if "__global__" not in source.read_text():
            continue  # host code only (quant_matmul.cu: checks and the choice of path)
        rows = ptxas.parse(logs[0].read_text())
        by_arch = {arch: sorted(r.name for r in rows if r.arch == arch) for arch in ARCHS}
        assert by_arch["sm_80"], f"{source.name}: no kernels in its ptxas report"
        assert by_arch["sm_80"] == by_arch["sm_90a"], f"{source.name}: different kernels per arch"
        assert all(r.registers > 0 for r in rows)
    rows = ptxas.parse(Path(jit.ptxas_report_path()).read_text())
    names = {ptxas.short_name(n).split("<")[0] for n in ptxas.demangle(r.name for r in rows)}
    assert NORM_KERNELS <= names
    # 3 dtypes x (vector, scalar) instances of the forward and the backward, + the reduction, per arch
    assert sum(1 for n in ptxas.demangle(r.name for r in rows) if ptxas.short_name(n).split("<")[0] in NORM_KERNELS) == 2 * (6 + 6 + 1)


def test_standalone_programs_build(cuda_ext, tmp_path):
    """Each csrc/standalone/<op>.cu compiles warning-free and links with the kernels' objects
    (the JIT build's, reused: this is what CMakeLists.txt builds, without compiling them again).
    Running them needs a GPU."""
    if cuda.prebuilt():
        pytest.skip("mini_llm._C was built ahead of time: no JIT objects to link with")
    import concurrent.futures
    import subprocess

    nvcc, _ = jit.find_nvcc()
    csrc = jit.csrc_dir()
    objects = [str(jit.compile_object(nvcc, s, jit.build_dir() / "obj")[0]) for s in sorted(csrc.glob("*.cu"))]

    def link(program):
        cmd = [nvcc, *jit.build_flags.NVCC_FLAGS, f"-I{csrc}", str(program), *objects, "-o", str(tmp_path / program.stem)]
        return program.name, subprocess.run(cmd, capture_output=True, text=True)

    programs = sorted((csrc / "standalone").glob("*.cu"))
    assert any(p.stem == "layer_norm" for p in programs)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for name, done in pool.map(link, programs):
            assert done.returncode == 0, f"{name}:\n{jit.diagnostics(done.stdout + done.stderr)}"
