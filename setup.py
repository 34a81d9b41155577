"""Builds the optional CUDA extension mini_llm._C from csrc/*.cu + csrc/bindings.cpp.

It is built only when torch and nvcc are both present at build time, i.e. with
`pip install --no-build-isolation -e .` on a machine that has them; a plain `pip install -e .`
(torch is not a build requirement, see pyproject.toml) installs the pure-Python package, and
the `cuda` backend then builds the same extension on first use (JIT, mini_llm/ops/cuda/jit.py)
where nvcc is present.
"""

import glob
import os
import runpy

from setuptools import setup

# The nvcc / C++ flags, shared with the JIT loader (mini_llm/ops/cuda/build_flags.py, import-free).
FLAGS = runpy.run_path("mini_llm/ops/cuda/build_flags.py")
# PyTorch's BuildExtension defines these for every .cu file; the JIT build (plain nvcc) does not.
# Undefine them so that both builds compile the same code (half/bfloat16 operators available).
UNDEFINE_TORCH_HALF_MACROS = [f"-U__CUDA_NO_{m}__" for m in
                              ("HALF_OPERATORS", "HALF_CONVERSIONS", "BFLOAT16_CONVERSIONS", "HALF2_OPERATORS")]


def cuda_extension():
    sources = sorted(glob.glob("csrc/*.cu"))  # not csrc/standalone/: those are programs
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("setup.py: torch is not importable at build time; skipping the CUDA extension")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None or not os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        print("setup.py: torch has no CUDA or no CUDA toolkit (nvcc) was found; skipping the CUDA "
              "extension (mini_llm.ops.cuda.load() can still JIT-build it where nvcc exists)")
        return [], {}
    ext = CUDAExtension(
        "mini_llm._C",
        sources + ["csrc/bindings.cpp"],
        include_dirs=["csrc"],
        # No -Werror for bindings.cpp here: setuptools includes PyTorch's headers with -I, so their
        # own warnings would count; the JIT build (run in CI) checks our code with -Werror.
        extra_compile_args={"cxx": FLAGS["CXX_FLAGS"], "nvcc": FLAGS["NVCC_FLAGS"] + UNDEFINE_TORCH_HALF_MACROS},
    )
    return [ext], {"build_ext": BuildExtension}


def tokenizer_extension():
    """The BPE tokenizer's C++ core, mini_llm.tokenizer._bpe_core (csrc/tokenizer/bpe_core.cpp, pybind11;
    no CUDA, no torch). Optional: if it cannot be built the tokenizer runs its pure-Python path."""
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("setup.py: pybind11 is not importable at build time; skipping the tokenizer's C++ core")
        return []
    return [Pybind11Extension("mini_llm.tokenizer._bpe_core", ["csrc/tokenizer/bpe_core.cpp"], cxx_std=20,
                              extra_compile_args=["-O3"], optional=True)]


ext_modules, cmdclass = cuda_extension()
setup(ext_modules=ext_modules + tokenizer_extension(), cmdclass=cmdclass)
