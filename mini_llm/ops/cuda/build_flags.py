"""The compiler flags of the CUDA extension, in one place: the JIT loader (jit.py), setup.py and
the standalone programs' instructions read them. No imports on purpose: setup.py loads this file
by path, before the package (or torch) is importable."""

# Every .cu file, for both targets: A100 (sm_80) and H100/H200 (sm_90a, which also enables the
# Hopper-only instructions: wgmma, TMA). -lineinfo maps SASS back to source lines in Nsight
# Compute; -Xptxas -v prints registers / spills / shared memory per kernel (kept in the build
# dir, see `python -m mini_llm.ops.cuda`).
GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90a,code=sm_90a",
]
NVCC_FLAGS = [
    "-O3",
    "-lineinfo",
    "-std=c++17",
    *GENCODE,
    "-Werror=all-warnings",  # nvcc's own diagnostics (front end, ptxas) are errors
    "-Xcompiler=-fPIC,-Wall,-Wextra,-Werror",  # so are the host compiler's
    "-Xptxas=-v",
]

# bindings.cpp, compiled by the host compiler against PyTorch's headers (which pick the C++
# standard: 17 or 20 depending on the PyTorch version). The JIT build includes PyTorch's headers
# as system headers, so warnings there are errors for our code only.
CXX_FLAGS = ["-O3", "-Wall", "-Wextra"]
CXX_WERROR = ["-Werror"]
