// Weight-only quantized matmul out (M, N) = x (M, K) @ W.T, W stored as int8 per output channel
// or int4 in groups along K (format: quant_matmul.h, mini_llm/ops/quant_format.py). The weight is never
// dequantized to memory: each kernel reads the packed bytes and dequantizes in registers.
// Launchers in quant_matmul.h; binding csrc/bindings.cpp; Python wrapper
// mini_llm/ops/cuda/quant_matmul.py; tests tests/test_cuda_quant_matmul.py; standalone check and
// timing csrc/standalone/quant_matmul.cu.
//
// This file checks the problem and picks a path; the kernels are in
// - quant_matmul_gemv.cu: quant_gemv_kernel (+ sum_splits_kernel for split-K), M <= 16 (decode;
//   memory bound), fp32 FMAs on weights dequantized in registers;
// - quant_matmul_tiled.cu: quant_mma_kernel, M > 16 with float16 / bfloat16 x (prefill; tensor
//   cores), and quant_simt_kernel for the rest (float32 x, or pointers / K that the 16-byte paths
//   cannot take).
// (QuantMatmulPath forces one path, for tests and benchmarks.)
#include "quant_matmul.h"

#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "quant_matmul_common.cuh"

namespace mini_llm {
namespace {

bool use_gemv(int64_t M, QuantMatmulPath path) {
  return path == QuantMatmulPath::gemv || (path == QuantMatmulPath::automatic && M <= kQuantGemvMaxRows);
}

bool bad_problem(int64_t M, int64_t N, int64_t K, int bits, int group_size) {
  if (M < 0 || N < 0 || K < 1 || M > INT_MAX || N > INT_MAX || K > INT_MAX / 2) return true;
  if (bits == 8) return group_size != K;
  return bits != 4 || !one_of(kQuantGroupSizes, group_size) || K % group_size != 0;
}

}  // namespace

cudaError_t quant_matmul_workspace_bytes(int64_t M, int64_t N, int64_t K, int bits, int group_size,
                                         QuantMatmulPath path, size_t* bytes) {
  *bytes = 0;
  if (bad_problem(M, N, K, bits, group_size)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0 || !use_gemv(M, path)) return cudaSuccess;
  return quant_detail::gemv_workspace_bytes(M, N, K, bits, bytes);
}

cudaError_t quant_matmul(const void* x, const void* qweight, const void* scales, void* out, void* workspace,
                         size_t workspace_bytes, int64_t M, int64_t N, int64_t K, int bits, int group_size,
                         DType dtype, QuantMatmulPath path, cudaStream_t stream) {
  if (bad_problem(M, N, K, bits, group_size)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const quant_detail::Problem p{x, static_cast<const uint8_t*>(qweight), static_cast<const __half*>(scales), out,
                                static_cast<float*>(workspace), workspace_bytes, int(M), int(N), int(K), bits,
                                group_size};
  return use_gemv(M, path) ? quant_detail::gemv(p, dtype, stream) : quant_detail::tiled(p, dtype, stream);
}

}  // namespace mini_llm
