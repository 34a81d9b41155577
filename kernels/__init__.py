"""Triton kernels, one file per op, installed as mini_llm.kernels (docs/stage-4-kernels.md).

Each file holds the kernel(s), a launcher that checks its inputs, the torch.library
registration (so autograd and torch.compile see an op) and a small GPU benchmark under
`python -m mini_llm.kernels.<op>`; the ops registry (mini_llm/ops/__init__.py) exposes the public
functions as the `triton` backend. Without a GPU they run in Triton's interpreter
(TRITON_INTERPRET=1), which is how the tests check them in CI.
"""
