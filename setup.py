"""Builds the optional CUDA extension mini_llm._C from csrc/*.cu + csrc/bindings.cpp.

It is built only when torch and nvcc are both present at build time, i.e. with
`pip install --no-build-isolation -e .` on a machine that has them; a plain `pip install -e .`
(torch is not a build requirement, see pyproject.toml) installs the pure-Python package, and
the registry then reports the `cuda` backend as "extension not built".
"""

import glob

from setuptools import setup


def cuda_extension():
    sources = sorted(glob.glob("csrc/*.cu"))
    if not sources:
        return [], {}
    try:
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("setup.py: torch is not importable at build time; skipping the CUDA extension")
        return [], {}
    if CUDA_HOME is None:
        print("setup.py: no CUDA toolkit (nvcc) found; skipping the CUDA extension")
        return [], {}
    arch = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]
    ext = CUDAExtension(
        "mini_llm._C",
        sources + ["csrc/bindings.cpp"],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *arch]},
    )
    return [ext], {"build_ext": BuildExtension}


def tokenizer_extension():
    """The BPE tokenizer's C++ core, mini_llm.tokenizer._bpe_core (csrc/bpe_core.cpp, pybind11;
    no CUDA, no torch). Optional: if it cannot be built the tokenizer runs its pure-Python path."""
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("setup.py: pybind11 is not importable at build time; skipping the tokenizer's C++ core")
        return []
    return [Pybind11Extension("mini_llm.tokenizer._bpe_core", ["csrc/bpe_core.cpp"], cxx_std=20,
                              extra_compile_args=["-O3"], optional=True)]


ext_modules, cmdclass = cuda_extension()
setup(ext_modules=ext_modules + tokenizer_extension(), cmdclass=cmdclass)
