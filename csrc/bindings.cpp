// The only file that includes <torch/extension.h>: it checks tensors (device, dtype, rank,
// shape, contiguity) and calls the plain-pointer launchers declared in csrc/<op>.h. Every bad
// input is a clear error raised here, before any launch. The current CUDA stream comes from
// Python as an integer (torch.cuda.current_stream().cuda_stream), because the CPU build of
// PyTorch that CI compiles this file against has no c10/cuda headers.
#include <torch/extension.h>

#include "common.h"
// -- launcher headers (one line per op) --

namespace {

using mini_llm::DType;

DType dtype_of(const torch::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return DType::f32;
    case torch::kFloat16: return DType::f16;
    case torch::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
}

void check_contiguous(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

void check_same_device(const torch::Tensor& a, const torch::Tensor& b, const char* name_a,
                       const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), name_a, " and ", name_b, " must be on the same device, got ",
              a.device(), " and ", b.device());
}

cudaStream_t as_stream(int64_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed to launch: ", cudaGetErrorString(err));
}

// -- layer_norm / rms_norm --

// -- attention --

// -- decode_attention --

// -- quant_matmul --

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // -- layer_norm / rms_norm --

  // -- attention --

  // -- decode_attention --

  // -- quant_matmul --
}
