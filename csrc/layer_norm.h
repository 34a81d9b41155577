// Launchers of LayerNorm and RMSNorm over the last dim of a row-major (rows, cols) tensor,
// forward and backward, each optionally fused with the residual add before it
// (s = x + delta; y = norm(s)). Kernels in layer_norm.cu; plain pointers, no torch types.
//
// x, delta, s, y, dy, ds, dx are of `dtype` (float32 / float16 / bfloat16); weight, bias,
// mean, rstd and the parameter gradients are float32. Every launcher returns the error of its
// launch (cudaGetLastError), or cudaErrorInvalidValue for sizes it cannot handle.
#pragma once

#include <cstdint>

#include "common.h"

namespace mini_llm {

// The widest row the kernels take: each thread keeps its share of a row in registers.
// mini_llm/ops/checks.py: CUDA_NORM_MAX_COLS.
constexpr int kNormMaxCols = 8192;

// y = norm(x) * weight (+ bias): LayerNorm centres each row (mean saved), RMSNorm (rms) does not
// (mean may be null). With delta non-null, x + delta is first written to s and normalised.
// rstd (and mean) are per row, float32: what the backward needs. bias may be null.
cudaError_t norm_forward(const void* x, const void* delta, void* s, const float* weight, const float* bias,
                         void* y, float* mean, float* rstd, int64_t rows, int cols, float eps, bool rms,
                         DType dtype, cudaStream_t stream);

// Rows of the float32 workspace `partials` (partial_rows x 2 x cols) that norm_backward needs:
// one (dweight, dbias) partial sum per row slot of its persistent grid (sized for the current
// device).
cudaError_t norm_backward_partial_rows(int64_t rows, int cols, DType dtype, int* partial_rows);

// dx = d norm(xs)/dxs . dy (+ ds, the gradient already flowing into s when fused; may be null),
// with xs the tensor the forward normalised (x, or s when fused); dweight, dbias (float32,
// cols) reduced deterministically from `partials`. dbias may be null (no bias); mean is null
// for RMSNorm.
cudaError_t norm_backward(const void* dy, const void* ds, const void* xs, const float* weight,
                          const float* mean, const float* rstd, void* dx, float* partials, int partial_rows,
                          float* dweight, float* dbias, int64_t rows, int cols, bool rms, DType dtype,
                          cudaStream_t stream);

}  // namespace mini_llm
