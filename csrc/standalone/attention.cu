// Standalone check and benchmark of the FlashAttention-2 launchers (csrc/attention_fwd.cu,
// attention_bwd.cu, attention_fp32.cu), in the style of llm.c's dev/cuda: random inputs, a CPU
// reference in double (forward: out and lse; backward: dq, dk, dv), every dtype / head dim /
// causal flag validated on small odd shapes with inputs in the model's strided layout, then
// cudaEvent timings in TFLOP/s. No Python, so Nsight Compute and compute-sanitizer can run it
// directly.
//
// Build and run (from the repository root):
//   nvcc -O3 -std=c++17 -lineinfo -arch=sm_90a -I csrc csrc/standalone/attention.cu csrc/attention_fwd.cu
//        csrc/attention_bwd.cu csrc/attention_fp32.cu -o attention      (one line; -arch=sm_80 on an A100)
//   ./attention                  # validate, then time bf16 B=4 nh=16 T=4096 hs=128, causal and not
//   ./attention B nh T hs        # time another shape
//   compute-sanitizer --tool memcheck ./attention 1 2 300 64     (racecheck likewise)
//   ncu --set full -k regex:flash_attention_fwd ./attention
// (or `cmake -B build -S . && cmake --build build`, which builds it beside the kernels library).
//
// Kernel versions (attention_forward / attention_backward pick them by dtype):
//   bf16 / fp16   flash_attention_fwd_kernel: tensor cores (mma.sync m16n8k16), 128 query rows
//                 per block, 64-key K/V tiles double-buffered with cp.async, online softmax.
//                 Backward: delta = rowsum(dO * O), then flash_attention_bwd_dq_kernel (query
//                 rows, like the forward) and flash_attention_bwd_dkdv_kernel (key rows).
//   fp32          exact float32 on CUDA cores (one lane per key / query of a 32-wide tile).
// Flops are counted as FlashAttention counts them: forward 4 B nh Tq Tk hs (half when causal),
// backward 2.5x the forward (5 matmuls; these kernels actually do 7, recomputing S and dP twice).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "attention.h"
#include "standalone/common.h"

using mini_llm::AttentionShape;
using mini_llm::AttentionStrides;
using mini_llm::DType;

// Everything in (B, nh, T, hs) order, contiguous, double.
struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};

// Forward and backward of one (batch, head) at a time: P = softmax(scale q k^T + mask),
// out = P v, dV = P^T dO, dP = dO v^T, dS = P (dP - rowsum(P dP)), dQ = scale dS k, dK = scale dS^T q.
Reference reference(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                    const std::vector<float>& dout, const AttentionShape& s, bool causal, double scale) {
  const int hs = s.head_dim, t_q = s.t_q, t_k = s.t_k;
  const size_t nq = static_cast<size_t>(s.batch) * s.heads * t_q * hs, nk = nq / t_q * t_k;
  Reference r{std::vector<double>(nq), std::vector<double>(nq / hs), std::vector<double>(nq),
              std::vector<double>(nk), std::vector<double>(nk)};
  std::vector<double> p(static_cast<size_t>(t_q) * t_k), dp(p.size());
  for (int bh = 0; bh < s.batch * s.heads; ++bh) {
    const size_t qo = static_cast<size_t>(bh) * t_q * hs, ko = static_cast<size_t>(bh) * t_k * hs;
    for (int i = 0; i < t_q; ++i) {
      const int visible = causal ? i + t_k - t_q + 1 : t_k;
      double max_score = -INFINITY, total = 0.0;
      for (int j = 0; j < visible; ++j) {
        double dot = 0.0;
        for (int d = 0; d < hs; ++d) dot += static_cast<double>(q[qo + i * hs + d]) * k[ko + j * hs + d];
        p[i * t_k + j] = dot * scale;
        max_score = std::fmax(max_score, dot * scale);
      }
      for (int j = 0; j < t_k; ++j) {
        p[i * t_k + j] = j < visible ? std::exp(p[i * t_k + j] - max_score) : 0.0;
        total += p[i * t_k + j];
      }
      r.lse[bh * t_q + i] = max_score + std::log(total);
      double delta = 0.0;
      for (int j = 0; j < t_k; ++j) {
        p[i * t_k + j] /= total;
        double dot = 0.0;
        for (int d = 0; d < hs; ++d) {
          r.out[qo + i * hs + d] += p[i * t_k + j] * v[ko + j * hs + d];
          dot += static_cast<double>(dout[qo + i * hs + d]) * v[ko + j * hs + d];
        }
        dp[i * t_k + j] = dot;
        delta += p[i * t_k + j] * dot;
      }
      for (int j = 0; j < t_k; ++j) {
        const double ds = p[i * t_k + j] * (dp[i * t_k + j] - delta);
        for (int d = 0; d < hs; ++d) {
          r.dq[qo + i * hs + d] += scale * ds * k[ko + j * hs + d];
          r.dk[ko + j * hs + d] += scale * ds * q[qo + i * hs + d];
          r.dv[ko + j * hs + d] += p[i * t_k + j] * dout[qo + i * hs + d];
        }
      }
    }
  }
  return r;
}

// One input tensor: random values rounded to T. The device copy is laid out as the model's
// (B, T, nh, hs) (strides {T nh hs, hs, nh hs}) when `model_layout`, else contiguous (B, nh, T, hs);
// the host copy is always (B, nh, T, hs) in float.
template <typename T>
struct Tensor {
  std::vector<float> host;
  T* device = nullptr;
  AttentionStrides strides{};

  Tensor(int batch, int heads, int t, int hs, bool model_layout, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    const size_t n = static_cast<size_t>(batch) * heads * t * hs;
    strides = model_layout ? AttentionStrides{int64_t(t) * heads * hs, hs, int64_t(heads) * hs}
                           : AttentionStrides{int64_t(heads) * t * hs, int64_t(t) * hs, hs};
    host.resize(n);
    std::vector<T> staged(n);
    for (int b = 0; b < batch; ++b)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < t; ++i)
          for (int d = 0; d < hs; ++d) {
            const T x = Host<T>::from(normal(rng));
            host[((static_cast<size_t>(b) * heads + h) * t + i) * hs + d] = Host<T>::to_float(x);
            staged[b * strides.batch + h * strides.head + i * strides.seq + d] = x;
          }
    CUDA_CHECK(cudaMalloc(&device, n * sizeof(T)));
    CUDA_CHECK(cudaMemcpy(device, staged.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Tensor() { cudaFree(device); }
};

// Norm-wise relative error (NaN counts as a failure). An all-zero reference (dq and dk with a
// single key: softmax is constantly 1) gets the largest absolute error instead.
double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
  double diff2 = 0.0, ref2 = 0.0, max_abs = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    diff2 += (got[i] - want[i]) * (got[i] - want[i]), ref2 += want[i] * want[i];
    max_abs = std::fmax(max_abs, std::fabs(got[i] - want[i]));
  }
  return ref2 > 0 ? std::sqrt(diff2 / ref2) : max_abs;
}

template <typename T>
bool validate(const AttentionShape& s, bool causal, const char* name) {
  std::mt19937 rng(1234u + s.t_q * 7 + s.head_dim + causal);
  const Tensor<T> q(s.batch, s.heads, s.t_q, s.head_dim, true, rng), k(s.batch, s.heads, s.t_k, s.head_dim, true, rng),
      v(s.batch, s.heads, s.t_k, s.head_dim, true, rng), dout(s.batch, s.heads, s.t_q, s.head_dim, false, rng);
  const size_t nq = q.host.size(), nk = k.host.size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  T *out = poisoned<T>(nq), *dq = poisoned<T>(nq), *dk = poisoned<T>(nk), *dv = poisoned<T>(nk);
  float *lse = poisoned<float>(nq / s.head_dim), *delta = poisoned<float>(nq / s.head_dim);
  const AttentionStrides contiguous{int64_t(s.heads) * s.t_q * s.head_dim, int64_t(s.t_q) * s.head_dim, s.head_dim};
  CUDA_CHECK(mini_llm::attention_forward(q.device, k.device, v.device, out, lse, s, q.strides, k.strides, v.strides,
                                         scale, causal, Host<T>::dtype, 0));
  CUDA_CHECK(mini_llm::attention_backward(q.device, k.device, v.device, out, lse, dout.device, dq, dk, dv, delta, s,
                                          q.strides, k.strides, v.strides, contiguous, dout.strides, scale, causal,
                                          Host<T>::dtype, 0));
  CUDA_CHECK(cudaDeviceSynchronize());
  const Reference want = reference(q.host, k.host, v.host, dout.host, s, causal, scale);
  const double errors[] = {relative_error(download(out, nq), want.out),
                           relative_error(download(lse, nq / s.head_dim), want.lse),
                           relative_error(download(dq, nq), want.dq), relative_error(download(dk, nk), want.dk),
                           relative_error(download(dv, nk), want.dv)};
  bool ok = true;
  for (int i = 0; i < 5; ++i) {
    const bool all_zero_reference = s.t_k == 1 && (i == 2 || i == 3);  // dq, dk: rounding noise vs 0
    ok = ok && errors[i] <= (all_zero_reference ? 1e-3 : Host<T>::tolerance);
  }
  std::printf("%-4s %-4s hs=%-3d Tq=%-4d Tk=%-4d %-6s rel err: out %.1e lse %.1e dq %.1e dk %.1e dv %.1e\n",
              ok ? "ok" : "FAIL", name, s.head_dim, s.t_q, s.t_k, causal ? "causal" : "full", errors[0], errors[1],
              errors[2], errors[3], errors[4]);
  for (void* p : {static_cast<void*>(out), static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv),
                  static_cast<void*>(lse), static_cast<void*>(delta)})
    CUDA_CHECK(cudaFree(p));
  return ok;
}

template <typename T>
bool validate_all(const char* name) {
  bool ok = true;
  for (int hs : {32, 64, 128})
    for (bool causal : {false, true}) {
      ok = validate<T>({2, 3, 1, 1, hs}, causal, name) && ok;        // one token
      ok = validate<T>({1, 2, 203, 203, hs}, causal, name) && ok;    // two query blocks, tail tiles
      ok = validate<T>({1, 2, 77, 330, hs}, causal, name) && ok;     // prefill against a longer cache
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

  int batch = 4, heads = 16, t = 4096, hs = 128;
  if (argc == 5) batch = std::atoi(argv[1]), heads = std::atoi(argv[2]), t = std::atoi(argv[3]), hs = std::atoi(argv[4]);
  using T = __nv_bfloat16;
  const AttentionShape s{batch, heads, t, t, hs};
  std::mt19937 rng(7u);
  const Tensor<T> q(batch, heads, t, hs, false, rng), k(batch, heads, t, hs, false, rng),
      v(batch, heads, t, hs, false, rng), dout(batch, heads, t, hs, false, rng);
  const size_t n = q.host.size();
  T *out = poisoned<T>(n), *dq = poisoned<T>(n), *dk = poisoned<T>(n), *dv = poisoned<T>(n);
  float *lse = poisoned<float>(n / hs), *delta = poisoned<float>(n / hs);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));

  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const auto time_ms = [&](auto&& fn) {
    for (int i = 0; i < 5; ++i) fn();  // warm-up
    const int reps = 20;
    CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < reps; ++i) fn();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return ms / reps;
  };
  std::printf("\nbf16 B=%d nh=%d T=%d hs=%d\n", batch, heads, t, hs);
  for (bool causal : {false, true}) {
    const double fwd_flops = 4.0 * batch * heads * double(t) * t * hs * (causal ? 0.5 : 1.0);
    const float fwd_ms = time_ms([&] {
      CUDA_CHECK(mini_llm::attention_forward(q.device, k.device, v.device, out, lse, s, q.strides, k.strides,
                                             v.strides, scale, causal, DType::bf16, 0));
    });
    const float bwd_ms = time_ms([&] {
      CUDA_CHECK(mini_llm::attention_backward(q.device, k.device, v.device, out, lse, dout.device, dq, dk, dv, delta,
                                              s, q.strides, k.strides, v.strides, q.strides, dout.strides, scale,
                                              causal, DType::bf16, 0));
    });
    std::printf("%-6s forward  %8.3f ms  %6.1f TFLOP/s\n", causal ? "causal" : "full", fwd_ms,
                fwd_flops / fwd_ms / 1e9);
    std::printf("%-6s backward %8.3f ms  %6.1f TFLOP/s\n", causal ? "causal" : "full", bwd_ms,
                2.5 * fwd_flops / bwd_ms / 1e9);
  }
  for (void* p : {static_cast<void*>(out), static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv),
                  static_cast<void*>(lse), static_cast<void*>(delta)})
    CUDA_CHECK(cudaFree(p));
  return 0;
}
