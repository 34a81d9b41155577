// The only file that includes <torch/extension.h>: it checks tensors (device, dtype, rank,
// shape, contiguity) and calls the plain-pointer launchers declared in csrc/<op>.h. Every bad
// input is a clear error raised here, before any launch. The current CUDA stream comes from
// Python as an integer (torch.cuda.current_stream().cuda_stream), because the CPU build of
// PyTorch that CI compiles this file against has no c10/cuda headers.
#include <torch/extension.h>

#include "common.h"
// -- launcher headers (one line per op) --
#include "attention.h"
#include "decode_attention.h"
#include "layer_norm.h"
#include "quant_matmul.h"

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

// A limit table of a launcher header as an error message lists it: "32, 64, 128".
template <int N>
std::string listed(const int (&allowed)[N]) {
  std::string s;
  for (int a : allowed) s += (s.empty() ? "" : ", ") + std::to_string(a);
  return s;
}

// -- layer_norm / rms_norm --

// x-shaped (rows, cols) activations of x's dtype; float32 (cols) parameters; float32 (rows) stats.
void check_norm_activation(const torch::Tensor& t, const char* name, const torch::Tensor& x) {
  check_cuda(t, name);
  check_same_device(t, x, name, "x");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have x's dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  check_contiguous(t, name);
}

void check_norm_float32(const torch::Tensor& t, const char* name, const torch::Tensor& x, int64_t size) {
  check_cuda(t, name);
  check_same_device(t, x, name, "x");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == size, name, " must have shape (", size, "), got ", t.sizes());
  check_contiguous(t, name);
}

// x: (rows, cols), contiguous, 1 <= cols <= kNormMaxCols, on the current CUDA device (the
// launchers launch there).
DType check_norm_input(const torch::Tensor& x, const char* name) {
  check_cuda(x, name);
  const DType dtype = dtype_of(x, name);
  TORCH_CHECK(x.dim() == 2, name, " must be 2-D (rows, cols), got shape ", x.sizes());
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= mini_llm::kNormMaxCols, name, " rows must have 1 to ",
              mini_llm::kNormMaxCols, " elements, got ", x.size(1));
  check_contiguous(x, name);
  int device = -1;
  check_launch(cudaGetDevice(&device), "cudaGetDevice");
  TORCH_CHECK(device == x.get_device(), name, " is on ", x.device(), " but the current CUDA device is ", device,
              " (use `with torch.cuda.device(...)`)");
  return dtype;
}

// (s, y, mean, rstd), the order of mini_llm/ops/__init__.py's contract: s = x + delta (empty
// without delta), y = norm(s), mean (empty for RMSNorm) and rstd saved for the backward.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> norm_forward(
    const torch::Tensor& x, const std::optional<torch::Tensor>& delta, const torch::Tensor& weight,
    const std::optional<torch::Tensor>& bias, double eps, bool rms, int64_t stream) {
  const DType dtype = check_norm_input(x, "x");
  const int64_t rows = x.size(0), cols = x.size(1);
  if (delta) check_norm_activation(*delta, "delta", x);
  check_norm_float32(weight, "weight", x, cols);
  if (bias) check_norm_float32(*bias, "bias", x, cols);
  TORCH_CHECK(!(rms && bias), "RMSNorm takes no bias");
  const auto stats = x.options().dtype(torch::kFloat32);
  torch::Tensor y = torch::empty_like(x), s = delta ? torch::empty_like(x) : torch::empty({0}, x.options());
  torch::Tensor mean = torch::empty({rms ? 0 : rows}, stats), rstd = torch::empty({rows}, stats);
  check_launch(mini_llm::norm_forward(x.data_ptr(), delta ? delta->data_ptr() : nullptr,
                                      delta ? s.data_ptr() : nullptr, weight.data_ptr<float>(),
                                      bias ? bias->data_ptr<float>() : nullptr, y.data_ptr(),
                                      rms ? nullptr : mean.data_ptr<float>(), rstd.data_ptr<float>(), rows, int(cols),
                                      float(eps), rms, dtype, as_stream(stream)),
               "norm_forward");
  return {s, y, mean, rstd};
}

// (dx, dweight, dbias): xs is what the forward normalised (x, or s when fused); ds, the
// gradient already flowing into s (fused only), is added to dx; dbias is empty unless has_bias.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> norm_backward(
    const torch::Tensor& dy, const std::optional<torch::Tensor>& ds, const torch::Tensor& xs,
    const torch::Tensor& weight, const std::optional<torch::Tensor>& mean, const torch::Tensor& rstd, bool rms,
    bool has_bias, int64_t stream) {
  const DType dtype = check_norm_input(xs, "xs");
  const int64_t rows = xs.size(0), cols = xs.size(1);
  check_norm_activation(dy, "dy", xs);
  if (ds) check_norm_activation(*ds, "ds", xs);
  check_norm_float32(weight, "weight", xs, cols);
  check_norm_float32(rstd, "rstd", xs, rows);
  TORCH_CHECK(rms || mean, "LayerNorm's backward needs the mean saved by the forward");
  if (!rms) check_norm_float32(*mean, "mean", xs, rows);
  int partial_rows = 0;
  check_launch(mini_llm::norm_backward_partial_rows(rows, int(cols), dtype, &partial_rows),
               "norm_backward_partial_rows");
  const auto f32 = xs.options().dtype(torch::kFloat32);
  torch::Tensor dx = torch::empty_like(xs), partials = torch::empty({partial_rows, 2, cols}, f32);
  torch::Tensor dweight = torch::empty({cols}, f32), dbias = torch::empty({has_bias ? cols : 0}, f32);
  check_launch(mini_llm::norm_backward(dy.data_ptr(), ds ? ds->data_ptr() : nullptr, xs.data_ptr(),
                                       weight.data_ptr<float>(), rms ? nullptr : mean->data_ptr<float>(),
                                       rstd.data_ptr<float>(), dx.data_ptr(), partials.data_ptr<float>(),
                                       partial_rows, dweight.data_ptr<float>(),
                                       has_bias ? dbias.data_ptr<float>() : nullptr, rows, int(cols), rms, dtype,
                                       as_stream(stream)),
               "norm_backward");
  return {dx, dweight, dbias};
}

// -- attention --

// q, k, v, out, dout: (B, nh, T, hs) views (see csrc/attention.h). The kernels copy rows in
// 16-byte pieces: stride 1 in the head dim, the other strides whole 16-byte multiples, and a
// 16-byte aligned start.
mini_llm::AttentionStrides attention_strides(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.stride(3) == 1, name, " must have stride 1 in its last (head) dim, got strides ", t.strides());
  const int64_t granule = 16 / t.element_size();
  for (int d = 0; d < 3; ++d)
    TORCH_CHECK(t.size(d) <= 1 || t.stride(d) % granule == 0, name, " has strides ", t.strides(),
                ": all but the last must be multiples of ", granule, " elements (16 bytes); call .contiguous() first");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
              " must start at a 16-byte aligned address; call .clone() first");
  return {t.stride(0), t.stride(1), t.stride(2)};
}

mini_llm::AttentionShape check_attention_inputs(const torch::Tensor& q, const torch::Tensor& k,
                                                const torch::Tensor& v, bool causal) {
  check_cuda(q, "q");
  check_cuda(k, "k");
  check_cuda(v, "v");
  check_same_device(k, q, "k", "q");
  check_same_device(v, q, "v", "q");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D (B, nh, T, hs), got shapes ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  dtype_of(q, "q");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "q, k, v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.sizes() == v.sizes(), "k ", k.sizes(), " and v ", v.sizes(), " differ in shape");
  const int64_t batch = q.size(0), heads = q.size(1), t_q = q.size(2), t_k = k.size(2), head_dim = q.size(3);
  TORCH_CHECK(k.size(0) == batch && k.size(1) == heads && k.size(3) == head_dim, "q ", q.sizes(), " and k ",
              k.sizes(), " disagree on batch, heads or head dim");
  TORCH_CHECK(mini_llm::one_of(mini_llm::kAttentionHeadDims, head_dim), "head dim ", head_dim,
              " is not supported; supported: ", listed(mini_llm::kAttentionHeadDims));
  TORCH_CHECK(t_k >= 1, "k and v must hold at least one position, got Tk = ", t_k);
  TORCH_CHECK(!causal || t_q <= t_k, "causal attention needs Tq <= Tk (the queries are the last Tq of the Tk ",
              "positions), got Tq = ", t_q, ", Tk = ", t_k);
  TORCH_CHECK(batch <= 65535 && heads <= 65535 && t_q < (1 << 30) && t_k < (1 << 30),
              "attention: sizes too large for the kernels' grid and 32-bit indices, got q ", q.sizes(), ", k ",
              k.sizes());
  return {int(batch), int(heads), int(t_q), int(t_k), int(head_dim)};
}

// A tensor the kernels write: on q's device, the given dtype and shape, contiguous.
void check_attention_output(const torch::Tensor& t, const char* name, const torch::Tensor& q,
                            torch::ScalarType dtype, at::IntArrayRef shape) {
  check_cuda(t, name);
  check_same_device(t, q, name, "q");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  check_contiguous(t, name);
}

// out (B, nh, Tq, hs) in q's dtype and lse float32 (B, nh, Tq), both filled here.
void attention_forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& out,
                       torch::Tensor& lse, bool causal, double scale, int64_t stream) {
  const mini_llm::AttentionShape shape = check_attention_inputs(q, k, v, causal);
  check_attention_output(out, "out", q, q.scalar_type(), q.sizes());
  check_attention_output(lse, "lse", q, torch::kFloat32, q.sizes().slice(0, 3));
  const auto q_strides = attention_strides(q, "q"), k_strides = attention_strides(k, "k"),
             v_strides = attention_strides(v, "v");
  const c10::DeviceGuard device(q.device());
  check_launch(mini_llm::attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                           lse.data_ptr<float>(), shape, q_strides, k_strides, v_strides,
                                           float(scale), causal, dtype_of(q, "q"), as_stream(stream)),
               "attention_forward");
}

// dq, dk, dv (contiguous, q's dtype) from the forward's out and lse and dout = dL/dout (out and
// dout may be strided like q). The float32 delta = rowsum(dout * out) workspace is allocated here.
void attention_backward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& out, const torch::Tensor& lse, const torch::Tensor& dout,
                        torch::Tensor& dq, torch::Tensor& dk, torch::Tensor& dv, bool causal, double scale,
                        int64_t stream) {
  const mini_llm::AttentionShape shape = check_attention_inputs(q, k, v, causal);
  const std::pair<const torch::Tensor*, const char*> like_q[] = {{&out, "out"}, {&dout, "dout"}};
  for (const auto& [t, name] : like_q) {
    check_cuda(*t, name);
    check_same_device(*t, q, name, "q");
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->sizes() == q.sizes(), name, " must match q (",
                q.scalar_type(), " ", q.sizes(), "), got ", t->scalar_type(), " ", t->sizes());
  }
  check_attention_output(lse, "lse", q, torch::kFloat32, q.sizes().slice(0, 3));  // read, not written
  check_attention_output(dq, "dq", q, q.scalar_type(), q.sizes());
  check_attention_output(dk, "dk", q, q.scalar_type(), k.sizes());
  check_attention_output(dv, "dv", q, q.scalar_type(), k.sizes());
  const auto q_strides = attention_strides(q, "q"), k_strides = attention_strides(k, "k"),
             v_strides = attention_strides(v, "v"), out_strides = attention_strides(out, "out"),
             dout_strides = attention_strides(dout, "dout");
  const c10::DeviceGuard device(q.device());
  const torch::Tensor delta = torch::empty_like(lse);
  check_launch(mini_llm::attention_backward(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                            lse.data_ptr<float>(), dout.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                                            dv.data_ptr(), delta.data_ptr<float>(), shape, q_strides, k_strides,
                                            v_strides, out_strides, dout_strides, float(scale), causal,
                                            dtype_of(q, "q"), as_stream(stream)),
               "attention_backward");
}

// -- decode_attention --

// out (B, nh, Tq, hs) = attention of q (B, nh, Tq, hs) against the caches (B, nkv, Tmax, hs), see
// csrc/decode_attention.h. Lengths are not range-checked here (that needs a device sync: the Python
// wrapper does it); the kernels clamp them. num_splits 0 lets the launcher cut the cache so the GPU
// is full; the float32 workspace the split results need is allocated here.
void decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                      const torch::Tensor& cache_lens, torch::Tensor& out, double scale, int64_t num_splits,
                      int64_t stream) {
  const DType dtype = dtype_of(q, "q");
  const std::pair<const torch::Tensor*, const char*> tensors[] = {
      {&q, "q"}, {&k_cache, "k_cache"}, {&v_cache, "v_cache"}, {&out, "out"}, {&cache_lens, "cache_lens"}};
  for (const auto& [t, name] : tensors) {
    check_cuda(*t, name);
    check_same_device(*t, q, name, "q");
    check_contiguous(*t, name);
    TORCH_CHECK(t == &cache_lens || t->scalar_type() == q.scalar_type(), name, " must have q's dtype ",
                q.scalar_type(), ", got ", t->scalar_type());
  }
  TORCH_CHECK(q.dim() == 4, "q must be 4-D (B, nh, Tq, hs), got shape ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4, "k_cache must be 4-D (B, nkv, Tmax, hs), got shape ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "k_cache ", k_cache.sizes(), " and v_cache ", v_cache.sizes(),
              " differ in shape");
  TORCH_CHECK(out.sizes() == q.sizes(), "out must have q's shape ", q.sizes(), ", got ", out.sizes());
  const int64_t batch = q.size(0), heads = q.size(1), t_q = q.size(2), head_dim = q.size(3);
  const int64_t kv_heads = k_cache.size(1), t_max = k_cache.size(2);
  TORCH_CHECK(k_cache.size(0) == batch && k_cache.size(3) == head_dim, "q ", q.sizes(), " and k_cache ",
              k_cache.sizes(), " disagree on batch or head dim");
  TORCH_CHECK(mini_llm::one_of(mini_llm::kDecodeHeadDims, head_dim), "head dim ", head_dim,
              " is not supported; supported: ", listed(mini_llm::kDecodeHeadDims));
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, heads, " query heads cannot share ", kv_heads,
              " key/value heads evenly");
  TORCH_CHECK(t_q <= t_max, "Tq = ", t_q, " new positions do not fit a cache of Tmax = ", t_max);
  TORCH_CHECK(batch * kv_heads <= INT_MAX && heads <= INT_MAX && t_max <= INT_MAX,
              "decode_attention: sizes too large for the kernels' 32-bit grid, got q ", q.sizes(), ", k_cache ",
              k_cache.sizes());
  TORCH_CHECK(cache_lens.scalar_type() == torch::kInt32 && cache_lens.dim() == 1 && cache_lens.size(0) == batch,
              "cache_lens must be an int32 tensor of shape (", batch, ",), got ", cache_lens.scalar_type(), " ",
              cache_lens.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(k_cache.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(v_cache.data_ptr()) % 16 == 0,
              "k_cache and v_cache must start at 16-byte aligned addresses (they are copied in 16-byte pieces)");
  TORCH_CHECK(num_splits >= 0 && num_splits <= INT_MAX, "num_splits must be >= 0 (0: automatic), got ", num_splits);
  const c10::DeviceGuard device(q.device());  // plan and launch on q's GPU
  const mini_llm::DecodeAttentionShape shape{int(batch), int(heads), int(kv_heads), int(t_q), int(t_max), int(head_dim)};
  mini_llm::DecodeAttentionPlan plan{};
  check_launch(mini_llm::decode_attention_plan(shape, dtype, int(num_splits), &plan), "decode_attention_plan");
  const torch::Tensor workspace = torch::empty({plan.workspace_floats}, q.options().dtype(torch::kFloat32));
  check_launch(mini_llm::decode_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                          cache_lens.data_ptr<int>(), out.data_ptr(),
                                          plan.workspace_floats ? workspace.data_ptr<float>() : nullptr, shape, plan,
                                          float(scale), dtype, as_stream(stream)),
               "decode_attention");
}

// -- quant_matmul --

// out (..., N) = x (..., K) @ W.T with W stored quantized (csrc/quant_matmul.h, mini_llm/ops/quant_format.py):
// qweight int8 (N, K) with float16 scales (N, 1) and group_size == K, or uint8 (N, K / 2) (two
// int4 per byte) with float16 scales (N, K / group_size), group_size 32, 64 or 128. out is
// preallocated, x's dtype. path: "auto", "gemv" or "tiled" (see QuantMatmulPath). The metadata
// (dtypes, shapes, group size) is checked before the devices, so its errors show on CPU tensors too.
void quant_matmul(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                  int64_t group_size, torch::Tensor& out, const std::string& path, int64_t stream) {
  const DType dtype = dtype_of(x, "x");
  TORCH_CHECK(qweight.scalar_type() == torch::kInt8 || qweight.scalar_type() == torch::kUInt8,
              "qweight must be int8 (8-bit, per output channel) or uint8 (two int4 per byte), got ",
              qweight.scalar_type());
  TORCH_CHECK(scales.scalar_type() == torch::kFloat16, "scales must be float16, got ", scales.scalar_type());
  TORCH_CHECK(out.scalar_type() == x.scalar_type(), "out must have x's dtype ", x.scalar_type(), ", got ",
              out.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "x must have at least one dimension (..., K), got a scalar");
  TORCH_CHECK(qweight.dim() == 2 && scales.dim() == 2, "qweight and scales must be 2-D, got ", qweight.sizes(),
              " and ", scales.sizes());
  const bool int8 = qweight.scalar_type() == torch::kInt8;
  const int bits = int8 ? 8 : 4;
  const int64_t N = qweight.size(0), K = int8 ? qweight.size(1) : 2 * qweight.size(1);
  TORCH_CHECK(x.size(-1) == K, "x ", x.sizes(), " has K = ", x.size(-1), " but qweight ", qweight.sizes(), " (",
              bits, "-bit) holds K = ", K);
  if (int8) {
    TORCH_CHECK(group_size == K, "int8 weights have one scale per output channel: group_size must be K = ", K,
                ", got ", group_size);
  } else {
    TORCH_CHECK(mini_llm::one_of(mini_llm::kQuantGroupSizes, group_size) && K % group_size == 0,
                "int4 group_size must be one of ", listed(mini_llm::kQuantGroupSizes), " and divide K = ", K,
                ", got ", group_size);
  }
  TORCH_CHECK(K > 0 && scales.size(0) == N && scales.size(1) == K / group_size, "scales ", scales.sizes(),
              " do not match qweight ", qweight.sizes(), " with group_size ", group_size, ": expected (", N, ", ",
              K > 0 ? K / group_size : 0, ")");
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  TORCH_CHECK(out.sizes() == c10::IntArrayRef(out_shape), "out must have shape ", c10::IntArrayRef(out_shape),
              ", got ", out.sizes());
  const int64_t M = x.numel() / K;
  TORCH_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX / 2, "quant_matmul: sizes too large for the kernels' "
              "32-bit indexing, got x ", x.sizes(), ", qweight ", qweight.sizes());
  mini_llm::QuantMatmulPath which = mini_llm::QuantMatmulPath::automatic;
  if (path == "gemv") {
    which = mini_llm::QuantMatmulPath::gemv;
  } else if (path == "tiled") {
    which = mini_llm::QuantMatmulPath::tiled;
  } else {
    TORCH_CHECK(path == "auto", "path must be \"auto\", \"gemv\" or \"tiled\", got \"", path, "\"");
  }
  const std::pair<const torch::Tensor*, const char*> tensors[] = {
      {&x, "x"}, {&qweight, "qweight"}, {&scales, "scales"}, {&out, "out"}};
  for (const auto& [t, name] : tensors) {
    check_cuda(*t, name);
    check_same_device(*t, x, name, "x");
    check_contiguous(*t, name);
  }
  const c10::DeviceGuard device(x.device());  // plan and launch on x's GPU
  size_t workspace_bytes = 0;
  check_launch(mini_llm::quant_matmul_workspace_bytes(M, N, K, bits, int(group_size), which, &workspace_bytes),
               "quant_matmul_workspace_bytes");
  const torch::Tensor workspace =
      torch::empty({int64_t(workspace_bytes)}, x.options().dtype(torch::kUInt8));  // split-K partial sums
  check_launch(mini_llm::quant_matmul(x.data_ptr(), qweight.data_ptr(), scales.data_ptr(), out.data_ptr(),
                                      workspace_bytes ? workspace.data_ptr() : nullptr, workspace_bytes, M, N, K, bits,
                                      int(group_size), dtype, which, as_stream(stream)),
               "quant_matmul");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // -- layer_norm / rms_norm --
  m.def("norm_forward", &norm_forward,
        "LayerNorm / RMSNorm forward, optionally fused with s = x + delta: (s, y, mean, rstd)",
        py::arg("x"), py::arg("delta"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("rms"),
        py::arg("stream"));
  m.def("norm_backward", &norm_backward, "LayerNorm / RMSNorm backward: (dx, dweight, dbias)", py::arg("dy"),
        py::arg("ds"), py::arg("xs"), py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("rms"),
        py::arg("has_bias"), py::arg("stream"));

  // -- attention --
  m.def("attention_forward", &attention_forward,
        "FlashAttention-2 forward: fills out (B, nh, Tq, hs) and lse float32 (B, nh, Tq); causal is bottom-right "
        "aligned",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("causal"), py::arg("scale"),
        py::arg("stream"));
  m.def("attention_backward", &attention_backward,
        "FlashAttention-2 backward: fills dq, dk, dv from q, k, v, out, lse and dout", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("dout"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("causal"), py::arg("scale"), py::arg("stream"));

  // -- decode_attention --
  m.def("decode_attention", &decode_attention,
        "Flash-decoding: out = attention of q's few new positions against the KV cache (GQA, per-sequence "
        "lengths); num_splits 0 = automatic",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::arg("out"), py::arg("scale"),
        py::arg("num_splits"), py::arg("stream"));

  // -- quant_matmul --
  m.def("quant_matmul", &quant_matmul,
        "Weight-only quantized matmul: fills out (..., N) = x (..., K) @ W.T, W int8 per channel or int4 "
        "group-wise; path \"auto\", \"gemv\" or \"tiled\"",
        py::arg("x"), py::arg("qweight"), py::arg("scales"), py::arg("group_size"), py::arg("out"), py::arg("path"),
        py::arg("stream"));
}
