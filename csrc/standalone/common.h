// Helpers shared by the standalone programs csrc/standalone/<op>.cu (each includes this file;
// how to build and run each is in its header): CUDA_CHECK, the host view of each element type
// (its DType, conversions, tolerance), NaN-poisoned device buffers and copies back to the host.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../common.h"  // mini_llm::DType

// Exits with file, line, the call and CUDA's message when a CUDA call fails.
#define CUDA_CHECK(call)                                                                         \
  do {                                                                                           \
    const cudaError_t err_ = (call);                                                             \
    if (err_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// Host-side conversions, the dtype each element type maps to, and its tolerance on the norm-wise
// relative error: TOLERANCE of mini_llm/ops/validation.py, the rule of the tests and the bench
// (tests/test_validation.py fails if these differ).
template <typename T>
struct Host;
template <>
struct Host<float> {
  static constexpr mini_llm::DType dtype = mini_llm::DType::f32;
  static constexpr double tolerance = 1e-5;
  static float from(float x) { return x; }
  static float to_float(float x) { return x; }
};
template <>
struct Host<__half> {
  static constexpr mini_llm::DType dtype = mini_llm::DType::f16;
  static constexpr double tolerance = 2e-3;
  static __half from(float x) { return __float2half(x); }
  static float to_float(__half x) { return __half2float(x); }
};
template <>
struct Host<__nv_bfloat16> {
  static constexpr mini_llm::DType dtype = mini_llm::DType::bf16;
  static constexpr double tolerance = 1e-2;
  static __nv_bfloat16 from(float x) { return __float2bfloat16(x); }
  static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

// A NaN-filled device buffer (0xff bytes are NaN in every float format): unwritten elements fail.
template <typename T>
T* poisoned(size_t n) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  CUDA_CHECK(cudaMemset(p, 0xff, n * sizeof(T)));
  return p;
}

// n elements of a device buffer, as doubles on the host.
template <typename T>
std::vector<double> download(const T* device, size_t n) {
  std::vector<T> raw(n);
  CUDA_CHECK(cudaMemcpy(raw.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = Host<T>::to_float(raw[i]);
  return out;
}
