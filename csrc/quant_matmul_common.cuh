// Shared by the three files of the quantized matmul: quant_matmul.cu (the launchers of
// quant_matmul.h: checks and the choice of path), quant_matmul_gemv.cu (M <= 16) and
// quant_matmul_tiled.cu (the tensor-core and the plain FMA tiled kernels): the problem as the
// launchers pass it on, the entry point of each path, and small helpers both paths use.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "device_common.cuh"
#include "quant_matmul.h"

namespace mini_llm::quant_detail {

// One checked call of quant_matmul (bits 8 or 4, sizes within int, M and N > 0).
struct Problem {
  const void* x;
  const uint8_t* qweight;
  const __half* scales;
  void* out;
  float* workspace;
  size_t workspace_bytes;
  int M, N, K, bits, group_size;
};

// The paths (quant_matmul_gemv.cu, quant_matmul_tiled.cu).
cudaError_t gemv(const Problem& p, DType dtype, cudaStream_t stream);
cudaError_t gemv_workspace_bytes(int64_t M, int64_t N, int64_t K, int bits, size_t* bytes);  // max into *bytes
cudaError_t tiled(const Problem& p, DType dtype, cudaStream_t stream);

// k values in one 16-byte chunk of a packed row.
__host__ __device__ constexpr int chunk_k(int bits) { return 128 / bits; }

// Kernels that take more than 48 KiB of dynamic shared memory must opt in.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, int64_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

// Calls f(TypeTag<T>{}, std::integral_constant<int, BITS>{}) for the runtime dtype and bits
// (8, else 4: the launchers have checked them).
template <typename F>
cudaError_t dispatch(DType dtype, int bits, F&& f) {
  return device::with_dtype(dtype, [&](auto tag) {
    return bits == 8 ? f(tag, std::integral_constant<int, 8>{}) : f(tag, std::integral_constant<int, 4>{});
  });
}

}  // namespace mini_llm::quant_detail
