"""Triton kernels, one file per op, installed as mini_llm.kernels.

Each file holds the kernel(s), a launcher that checks its inputs, and the torch.library
registration; the ops registry (mini_llm/ops/registry.py) exposes them as the `triton`
backend. No op has a Triton kernel yet: they arrive with the training- and inference-kernel
issues, and until then `--kernels triton` says so.
"""
