// Shared by every launcher header and by bindings.cpp: plain C++, no CUDA or torch types
// beyond cudaStream_t, so the binding compiles against a CPU-only PyTorch.
#pragma once

#include <cuda_runtime_api.h>

namespace mini_llm {

// The element types a launcher accepts; bindings.cpp maps torch dtypes onto these.
enum class DType { f32, f16, bf16 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "?";
}

// Whether `value` is in `allowed`, one of the limit tables of the launcher headers (head dims,
// group sizes). Each table is the one C++ copy of a limit that mini_llm/ops/checks.py names for
// Python; tests/test_op_contracts.py reads the headers and holds the two equal.
template <int N>
constexpr bool one_of(const int (&allowed)[N], long long value) {
  for (int a : allowed)
    if (a == value) return true;
  return false;
}

}  // namespace mini_llm
