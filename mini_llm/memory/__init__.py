"""Training memory: how many bytes one training step holds at its highest point, predicted from
the shapes alone, and measured.

A training step (forward, backward, optimizer step, as train.py runs it) holds:

  parameters        P floats
  optimizer state   AdamW's exp_avg and exp_avg_sq, 2 P floats, and a step counter per tensor
  batch             x and y, (B, T) int64 each (the logits are dropped as the forward returns)
  activations       every tensor autograd saves in the forward for the backward, layer by layer
  gradients         P floats, created layer by layer as the backward goes from the loss down
  temporaries       the gradients flowing through the op being differentiated, and its scratch

The backward frees each op's saved tensors once that op is differentiated, while the parameter
gradients grow; so the peak usually comes early in the backward, in the last block, on top of
nearly all activations. `predict_training_memory` walks the backward op by op (a `Step` per op,
in forward order) to find it. Each op below says which tensors it saves and why; the counts were
checked node by node against PyTorch 2.13 on CPU (the saved tensors through grad_fn._saved_*,
every allocation through the profiler), and tests/test_memory.py checks the total against
`measure_training_memory`.

Notation: B batch, T context, C = n_embd, nh heads, hs = C // nh, V vocabulary, H the MLP's
hidden width, N = B * T tokens, S = B * nh * T * T * 4 (one float32 attention matrix). Bytes.

What is modelled:
  dtype "float32", or "bfloat16": autocast as train.py uses it (matmuls and attention in bf16;
    embeddings, norms, the residual stream, the loss and all parameters and gradients in fp32).
  device "cpu" or "cuda": on CUDA dropout saves a bool mask (1 byte), on CPU a mask of the
    input's dtype; the CPU flash kernel's output follows q's memory layout, so with RoPE the
    attention output is copied before c_proj; PyTorch's CPU rms_norm is a chain of ops
    (saves more), CUDA's is one fused kernel.
  kernels: a --kernels selection. attention=reference is the materialized attention (it keeps
    three T x T matrices per layer); the other ops are modelled on their fused backends (torch;
    the Triton and CUDA kernels are assumed to save what the torch ones save).
  activation checkpointing: each block keeps only its input; its backward reruns its forward.

Not modelled: allocator rounding (the CUDA caching allocator rounds each block up to 512 bytes),
the CPU attention kernel's per-thread tiles (a few hundred KB), scalars, cuBLAS / oneDNN scratch.
Checked here on CPU (float32 and CPU bf16 autocast); the CUDA rules (bool masks, FlashAttention's
fp32 dq accumulator, fused rms_norm) follow PyTorch's kernels but have not been measured yet.
"""

from .available import available_bytes, check_training_fits
from .measure import cpu_peak_bytes, measure_training_memory
from .predict import MemoryPrediction, format_prediction, predict_training_memory
from .saved import MIB

__all__ = ["MIB", "MemoryPrediction", "cpu_peak_bytes", "format_prediction",
           "measure_training_memory", "predict_training_memory"]
