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

}  // namespace mini_llm
