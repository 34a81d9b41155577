// Standalone check and benchmark of the flash-decoding launcher (csrc/decode_attention.cu), in the
// style of llm.c's dev/cuda: random inputs, a CPU reference in double, every dtype / head size /
// split mode validated, then cudaEvent timings in GB/s next to a device-to-device copy of the
// same bytes (the bandwidth a memory-bound kernel can hope for). No Python, so Nsight Compute
// can profile it directly.
//
// Build and run (from the repository root):
//   nvcc -O3 -std=c++17 -lineinfo -arch=sm_90a -I csrc csrc/standalone/decode_attention.cu
//        csrc/decode_attention.cu -o decode_attention         (one line; -arch=sm_80 on an A100)
//   ./decode_attention                      # validate, then time B=8 nh=32 nkv=8 Tq=1 Tmax=4096 hs=128 bf16
//   ./decode_attention B nh nkv Tq Tmax hs  # time another shape (bf16, every sequence full)
//   ncu --set full -k regex:decode ./decode_attention
// (or `cmake -B build -S . && cmake --build build`, which builds it beside the kernels library).
//
// Kernel versions (one launcher, decode_attention, picks per call; details in decode_attention.cu):
//   per-warp math     bf16 / fp16: tensor cores (mma.sync m16n8k16 for Q K^T, m16n8k8 for P V);
//                     float32: CUDA-core FMAs (exact float32).
//   split + combine   the cache of each (sequence, kv head) is cut into num_splits slices, one
//                     block each; a second kernel merges the slices by their log-sum-exps.
//   single split      num_splits == 1 (a batch big enough to fill the GPU alone): the one block
//                     per (sequence, kv head) writes the output, no workspace, no second kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "decode_attention.h"
#include "standalone/common.h"

using mini_llm::DecodeAttentionPlan;
using mini_llm::DecodeAttentionShape;
using mini_llm::DType;

// out[b][h][i] = softmax_j<=pos(scale * q.k_j) v_j in double, pos = len_b - Tq + i, kv head h / group.
std::vector<double> reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                              const std::vector<int>& lens, const DecodeAttentionShape& s, double scale) {
  const int group = s.heads / s.kv_heads, hs = s.head_dim;
  std::vector<double> out(q.size()), scores(s.t_max);
  for (int b = 0; b < s.batch; ++b)
    for (int h = 0; h < s.heads; ++h)
      for (int i = 0; i < s.t_q; ++i) {
        const float* qr = &q[((static_cast<size_t>(b) * s.heads + h) * s.t_q + i) * hs];
        const size_t head = (static_cast<size_t>(b) * s.kv_heads + h / group) * s.t_max * hs;
        const int visible = lens[b] - s.t_q + i + 1;
        double max_score = -INFINITY, total = 0.0;
        for (int j = 0; j < visible; ++j) {
          double dot = 0.0;
          for (int d = 0; d < hs; ++d) dot += static_cast<double>(qr[d]) * k[head + static_cast<size_t>(j) * hs + d];
          scores[j] = dot * scale;
          max_score = std::fmax(max_score, scores[j]);
        }
        double* o = &out[((static_cast<size_t>(b) * s.heads + h) * s.t_q + i) * hs];
        for (int j = 0; j < visible; ++j) {
          const double p = std::exp(scores[j] - max_score);
          total += p;
          for (int d = 0; d < hs; ++d) o[d] += p * v[head + static_cast<size_t>(j) * hs + d];
        }
        for (int d = 0; d < hs; ++d) o[d] /= total;
      }
  return out;
}

// Random inputs rounded to T, on the device; the host copies keep the rounded values in float.
template <typename T>
struct Inputs {
  DecodeAttentionShape shape;
  std::vector<float> q, k, v;
  std::vector<int> lens;
  T *d_q = nullptr, *d_k = nullptr, *d_v = nullptr, *d_out = nullptr;
  int* d_lens = nullptr;

  Inputs(const DecodeAttentionShape& s, const std::vector<int>& lengths, unsigned seed) : shape(s), lens(lengths) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    const size_t nq = static_cast<size_t>(s.batch) * s.heads * s.t_q * s.head_dim;
    const size_t nk = static_cast<size_t>(s.batch) * s.kv_heads * s.t_max * s.head_dim;
    q = upload(&d_q, nq, rng, normal);
    k = upload(&d_k, nk, rng, normal);
    v = upload(&d_v, nk, rng, normal);
    CUDA_CHECK(cudaMalloc(&d_out, nq * sizeof(T)));
    CUDA_CHECK(cudaMalloc(&d_lens, lens.size() * sizeof(int)));
    CUDA_CHECK(cudaMemcpy(d_lens, lens.data(), lens.size() * sizeof(int), cudaMemcpyHostToDevice));
  }
  ~Inputs() {
    cudaFree(d_q), cudaFree(d_k), cudaFree(d_v), cudaFree(d_out), cudaFree(d_lens);
  }

  static std::vector<float> upload(T** dst, size_t n, std::mt19937& rng, std::normal_distribution<float>& normal) {
    std::vector<T> device_copy(n);
    std::vector<float> rounded(n);
    for (size_t i = 0; i < n; ++i) {
      device_copy[i] = Host<T>::from(normal(rng));
      rounded[i] = Host<T>::to_float(device_copy[i]);
    }
    CUDA_CHECK(cudaMalloc(dst, n * sizeof(T)));
    CUDA_CHECK(cudaMemcpy(*dst, device_copy.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    return rounded;
  }

  // Plans with `requested_splits`, allocates the workspace, launches on the default stream.
  DecodeAttentionPlan run(int requested_splits, float** workspace) {
    DecodeAttentionPlan plan{};
    CUDA_CHECK(mini_llm::decode_attention_plan(shape, Host<T>::dtype, requested_splits, &plan));
    *workspace = nullptr;
    if (plan.workspace_floats > 0) CUDA_CHECK(cudaMalloc(workspace, plan.workspace_floats * sizeof(float)));
    CUDA_CHECK(launch(plan, *workspace));
    return plan;
  }

  cudaError_t launch(const DecodeAttentionPlan& plan, float* workspace) {
    return mini_llm::decode_attention(d_q, d_k, d_v, d_lens, d_out, workspace, shape, plan,
                                      1.0f / std::sqrt(static_cast<float>(shape.head_dim)), Host<T>::dtype, 0);
  }
};

// Validates one case; returns false (and says why) on a mismatch.
template <typename T>
bool validate(const DecodeAttentionShape& s, const std::vector<int>& lens, int requested_splits, const char* name) {
  Inputs<T> in(s, lens, 1234u + requested_splits);
  const size_t n = in.q.size();
  CUDA_CHECK(cudaMemset(in.d_out, 0xff, n * sizeof(T)));  // NaN in every dtype: unwritten elements fail
  float* workspace = nullptr;
  const DecodeAttentionPlan plan = in.run(requested_splits, &workspace);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> got(n);
  CUDA_CHECK(cudaMemcpy(got.data(), in.d_out, n * sizeof(T), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(workspace));
  const std::vector<double> want =
      reference(in.q, in.k, in.v, lens, s, 1.0 / std::sqrt(static_cast<double>(s.head_dim)));
  double diff2 = 0.0, ref2 = 0.0, max_abs = 0.0;
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    const double g = Host<T>::to_float(got[i]), d = g - want[i];
    finite = finite && std::isfinite(g);
    diff2 += d * d, ref2 += want[i] * want[i];
    max_abs = std::fmax(max_abs, std::fabs(d));
  }
  const double rel = std::sqrt(diff2 / ref2);
  const bool ok = finite && rel <= Host<T>::tolerance;
  std::printf("%-4s %-5s B=%d nh=%d nkv=%d Tq=%d Tmax=%d hs=%d splits=%d x %d keys: rel err %.2e, max abs %.2e\n",
              ok ? "ok" : "FAIL", name, s.batch, s.heads, s.kv_heads, s.t_q, s.t_max, s.head_dim, plan.num_splits,
              plan.keys_per_split, rel, max_abs);
  return ok;
}

template <typename T>
bool validate_all(const char* name) {
  bool ok = true;
  for (int hs : {64, 128}) {
    // GQA (group 4), 3 new positions, mixed lengths (full, == Tq, not a multiple of any tile).
    const DecodeAttentionShape gqa{3, 8, 2, 3, 517, hs};
    for (int splits : {0, 1, 7}) ok = validate<T>(gqa, {517, 3, 200}, splits, name) && ok;
    // MHA, one new position; group 8 with Tq 4 (32 rows: two row chunks per kv head).
    ok = validate<T>({2, 4, 4, 1, 300, hs}, {300, 1}, 0, name) && ok;
    ok = validate<T>({1, 16, 2, 4, 1000, hs}, {999}, 0, name) && ok;
  }
  return ok;
}

int main(int argc, char** argv) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  const bool ok = validate_all<float>("fp32") & validate_all<__half>("fp16") & validate_all<__nv_bfloat16>("bf16");
  if (!ok) {
    std::printf("validation FAILED\n");
    return 1;
  }

  DecodeAttentionShape s{8, 32, 8, 1, 4096, 128};
  if (argc == 7) s = {std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]),
                      std::atoi(argv[5]), std::atoi(argv[6])};
  using T = __nv_bfloat16;
  Inputs<T> in(s, std::vector<int>(s.batch, s.t_max), 7u);
  float* workspace = nullptr;
  const DecodeAttentionPlan plan = in.run(0, &workspace);
  const double kv_bytes = 2.0 * s.batch * s.kv_heads * s.t_max * s.head_dim * sizeof(T);
  const double bytes = kv_bytes + 2.0 * in.q.size() * sizeof(T);  // + q read, out written

  // A device-to-device copy of the K/V bytes: reads and writes kv_bytes each, so its GB/s counts 2x.
  T* copy = nullptr;
  CUDA_CHECK(cudaMalloc(&copy, kv_bytes / 2));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const int reps = 100;
  const auto time_ms = [&](auto&& fn) {
    for (int i = 0; i < 10; ++i) fn();  // warm-up
    CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < reps; ++i) fn();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return ms / reps;
  };
  const float attention_ms = time_ms([&] { CUDA_CHECK(in.launch(plan, workspace)); });
  const float copy_ms = time_ms([&] { CUDA_CHECK(cudaMemcpyAsync(copy, in.d_k, kv_bytes / 2, cudaMemcpyDeviceToDevice)); });
  const double attention_gb_s = bytes / attention_ms / 1e6, copy_gb_s = kv_bytes / copy_ms / 1e6;
  std::printf("\nbf16 B=%d nh=%d nkv=%d Tq=%d Tmax=%d hs=%d (every sequence full), %d splits x %d keys\n", s.batch,
              s.heads, s.kv_heads, s.t_q, s.t_max, s.head_dim, plan.num_splits, plan.keys_per_split);
  std::printf("decode_attention: %8.2f us  %7.1f GB/s  (%.0f%% of the copy's)\n", attention_ms * 1e3, attention_gb_s,
              100.0 * attention_gb_s / copy_gb_s);
  std::printf("cudaMemcpy d2d:   %8.2f us  %7.1f GB/s  (read + write of the K cache's bytes)\n", copy_ms * 1e3,
              copy_gb_s);
  CUDA_CHECK(cudaFree(copy));
  CUDA_CHECK(cudaFree(workspace));
  return 0;
}
