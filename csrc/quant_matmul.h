// Launchers of the weight-only quantized matmul out = x @ W.T (defined in quant_matmul.cu, kernels
// in quant_matmul_gemv.cu and quant_matmul_tiled.cu; plain pointers, no torch types).
//
// The weight W (N, K) = (out_features, in_features) is stored quantized (mini_llm/ops/quant_format.py):
//   bits 8: qweight int8 (N, K), W[n, k] = q * scales[n]            (group_size == K)
//   bits 4: qweight uint8 (N, K / 2); byte j of a row holds k = 2j in its low nibble and
//           k = 2j + 1 in its high one, nibble u meaning q = u - 8;
//           W[n, k] = q * scales[n, k / group_size]                  (group_size 32, 64 or 128)
// scales are float16 (N, K / group_size). x is (M, K) row-major and out (M, N) row-major, both of
// `dtype` (float32 / float16 / bfloat16); accumulation is in float32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.h"

namespace mini_llm {

// Which kernel runs. automatic: the GEMV kernel for M <= kQuantGemvMaxRows (decode: memory
// bound), the tiled kernel above. The others force one, for tests and benchmarks (gemv then
// walks M in slices of kQuantGemvMaxRows rows).
enum class QuantMatmulPath { automatic, gemv, tiled };

constexpr int kQuantGemvMaxRows = 16;

// The int4 group sizes (k per scale) the kernels take. mini_llm/ops/checks.py: QUANT_GROUP_SIZES.
constexpr int kQuantGroupSizes[] = {32, 64, 128};

// Bytes of scratch (float32 split-K partial sums of the GEMV kernel) quant_matmul needs for this
// problem on the current device; 0 when it needs none. Returns cudaErrorInvalidValue for sizes
// it cannot handle (anything above INT32_MAX, a bad bits / group size).
cudaError_t quant_matmul_workspace_bytes(int64_t M, int64_t N, int64_t K, int bits, int group_size,
                                         QuantMatmulPath path, size_t* bytes);

// out (M, N) = x (M, K) @ dequantize(qweight, scales).T on `stream` (the current device).
// workspace: at least quant_matmul_workspace_bytes of device memory (may be null when that is 0).
// Returns the launch error (cudaGetLastError), or cudaErrorInvalidValue for bad sizes / a too
// small workspace. M == 0 or N == 0 launches nothing.
cudaError_t quant_matmul(const void* x, const void* qweight, const void* scales, void* out, void* workspace,
                         size_t workspace_bytes, int64_t M, int64_t N, int64_t K, int bits, int group_size,
                         DType dtype, QuantMatmulPath path, cudaStream_t stream);

}  // namespace mini_llm
