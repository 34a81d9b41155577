// Standalone check and benchmark of the weight-only quantized matmul launcher (csrc/quant_matmul.cu),
// in the style of llm.c's dev/cuda: random weights quantized on the host (int8 per output channel,
// int4 in groups of 32 / 64 / 128), a CPU reference in double, both paths (GEMV and tiled) validated
// for every activation dtype on small odd shapes (M 1, 3, 16, 17, 130; N not a multiple of any
// tile; K with a partial tile, and for int8 a K whose rows are not 16-byte aligned), then timed
// with cudaEvents: GB/s for the GEMV path (decode: memory bound; the weights rotate through more
// copies than L2 holds, as a model's layers would), TFLOP/s for the tiled path. No Python, so
// Nsight Compute and compute-sanitizer can run it directly.
//
// Build and run (from the repository root):
//   nvcc -O3 -std=c++17 -lineinfo -arch=sm_90a -I csrc csrc/standalone/quant_matmul.cu csrc/quant_matmul.cu
//        csrc/quant_matmul_gemv.cu csrc/quant_matmul_tiled.cu -o quant_matmul   (one line; -arch=sm_80 on an A100)
//   ./quant_matmul                # validate, then time bf16 M=1 and M=2048 with N = K = 4096
//   ./quant_matmul M N K          # time another shape (bf16 activations, int8 and int4 g128)
//   compute-sanitizer --tool memcheck ./quant_matmul 17 300 384        (and --tool racecheck)
//   ncu --set full -k regex:quant_ ./quant_matmul 1 4096 4096
// (or `cmake -B build -S . && cmake --build build`, which builds it beside the kernels library).
//
// Kernel versions (the launcher picks by M and dtype; path forces one):
//   quant_gemv_kernel   M <= 16: packed rows streamed once with 128-bit loads, dequantized in
//                       registers, fp32 FMAs against x staged in shared memory; split-K into a
//                       float32 workspace + sum_splits_kernel when that fills the GPU better.
//   quant_mma_kernel    M > 16, fp16 / bf16: 128 x 128 tiles, 4-stage cp.async pipeline,
//                       weights dequantized into registers, mma.sync m16n8k16 (fp32 accumulate).
//   quant_simt_kernel   M > 16, fp32 activations (or unaligned rows): shared-memory tiles, FMAs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "quant_matmul.h"
#include "standalone/common.h"

using mini_llm::DType;
using mini_llm::QuantMatmulPath;

// A random (N, K) weight quantized as mini_llm/ops/quant_format.py does: q = round(w / scale), scale =
// absmax / qmax of the row (int8) or group (int4), stored as float16. `q` keeps the integers.
struct QuantWeight {
  int N, K, bits, group_size;
  std::vector<int8_t> q;         // (N, K)
  std::vector<float> scales;     // (N, K / group_size), the float16 values
  std::vector<uint8_t> packed;   // int8: (N, K) bytes; int4: (N, K / 2), k = 2j low nibble
  std::vector<__half> scales16;

  QuantWeight(int n, int k, int b, int g, unsigned seed) : N(n), K(k), bits(b), group_size(g) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    const int qmax = bits == 8 ? 127 : 7, groups = K / group_size;
    q.resize(size_t(N) * K);
    scales.resize(size_t(N) * groups);
    scales16.resize(scales.size());
    std::vector<float> row(K);
    for (int r = 0; r < N; ++r) {
      for (float& w : row) w = normal(rng);
      for (int gi = 0; gi < groups; ++gi) {
        float absmax = 0.f;
        for (int i = 0; i < group_size; ++i) absmax = std::max(absmax, std::fabs(row[gi * group_size + i]));
        const __half s = __float2half(std::max(absmax / qmax, 1e-4f));
        scales16[size_t(r) * groups + gi] = s;
        scales[size_t(r) * groups + gi] = __half2float(s);
        for (int i = 0; i < group_size; ++i) {
          const float v = std::nearbyint(row[gi * group_size + i] / __half2float(s));
          q[size_t(r) * K + gi * group_size + i] = int8_t(std::clamp(v, float(-qmax), float(qmax)));
        }
      }
    }
    if (bits == 8) {
      packed.assign(q.begin(), q.end());  // two's complement bytes
    } else {
      packed.resize(size_t(N) * K / 2);
      for (size_t i = 0; i < packed.size(); ++i)
        packed[i] = uint8_t((q[2 * i] + 8) | ((q[2 * i + 1] + 8) << 4));
    }
  }
  size_t bytes() const { return packed.size() + scales16.size() * sizeof(__half); }
};

// out[m][n] = sum_k x[m][k] q[n][k] scale[n][k / group] in double.
std::vector<double> reference(const std::vector<float>& x, const QuantWeight& w, int M) {
  std::vector<double> out(size_t(M) * w.N);
  const int groups = w.K / w.group_size;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < w.N; ++n) {
      double sum = 0.0;
      for (int k = 0; k < w.K; ++k)
        sum += double(x[size_t(m) * w.K + k]) * w.q[size_t(n) * w.K + k] * w.scales[size_t(n) * groups + k / w.group_size];
      out[size_t(m) * w.N + n] = sum;
    }
  return out;
}

template <typename T>
struct DeviceProblem {
  int M;
  const QuantWeight& w;
  std::vector<float> x;  // rounded to T
  T *d_x = nullptr, *d_out = nullptr;
  void *d_qweight = nullptr, *d_scales = nullptr, *d_workspace = nullptr;
  size_t workspace_bytes = 0;

  DeviceProblem(int m, const QuantWeight& weight, unsigned seed) : M(m), w(weight), x(size_t(m) * weight.K) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<T> xt(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      xt[i] = Host<T>::from(normal(rng));
      x[i] = Host<T>::to_float(xt[i]);
    }
    CUDA_CHECK(cudaMalloc(&d_x, xt.size() * sizeof(T)));
    CUDA_CHECK(cudaMemcpy(d_x, xt.data(), xt.size() * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMalloc(&d_out, size_t(M) * w.N * sizeof(T)));
    CUDA_CHECK(cudaMalloc(&d_qweight, w.packed.size()));
    CUDA_CHECK(cudaMemcpy(d_qweight, w.packed.data(), w.packed.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMalloc(&d_scales, w.scales16.size() * sizeof(__half)));
    CUDA_CHECK(cudaMemcpy(d_scales, w.scales16.data(), w.scales16.size() * sizeof(__half), cudaMemcpyHostToDevice));
  }
  ~DeviceProblem() { cudaFree(d_x), cudaFree(d_out), cudaFree(d_qweight), cudaFree(d_scales), cudaFree(d_workspace); }

  // Sizes the workspace for `path` (once), then launches on the default stream with `qweight`.
  cudaError_t launch(QuantMatmulPath path, const void* qweight = nullptr, const void* scales = nullptr) {
    size_t bytes = 0;
    if (cudaError_t err = mini_llm::quant_matmul_workspace_bytes(M, w.N, w.K, w.bits, w.group_size, path, &bytes);
        err != cudaSuccess)
      return err;
    if (bytes > workspace_bytes) {
      CUDA_CHECK(cudaFree(d_workspace));
      CUDA_CHECK(cudaMalloc(&d_workspace, bytes));
      workspace_bytes = bytes;
    }
    return mini_llm::quant_matmul(d_x, qweight ? qweight : d_qweight, scales ? scales : d_scales, d_out, d_workspace,
                                  workspace_bytes, M, w.N, w.K, w.bits, w.group_size, Host<T>::dtype, path, 0);
  }
};

const char* path_name(QuantMatmulPath p) { return p == QuantMatmulPath::gemv ? "gemv" : "tiled"; }

template <typename T>
bool validate(int M, const QuantWeight& w, QuantMatmulPath path, const char* name) {
  DeviceProblem<T> p(M, w, 1234u + M);
  CUDA_CHECK(cudaMemset(p.d_out, 0xff, size_t(M) * w.N * sizeof(T)));  // NaN in every dtype: unwritten fails
  CUDA_CHECK(p.launch(path));
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> got(size_t(M) * w.N);
  CUDA_CHECK(cudaMemcpy(got.data(), p.d_out, got.size() * sizeof(T), cudaMemcpyDeviceToHost));
  const std::vector<double> want = reference(p.x, w, M);
  double diff2 = 0.0, ref2 = 0.0, max_abs = 0.0;
  bool finite = true;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = Host<T>::to_float(got[i]), d = g - want[i];
    finite = finite && std::isfinite(g);
    diff2 += d * d, ref2 += want[i] * want[i];
    max_abs = std::fmax(max_abs, std::fabs(d));
  }
  const double rel = std::sqrt(diff2 / ref2);
  const bool ok = finite && rel <= Host<T>::tolerance;
  std::printf("%-4s %-4s %-5s int%d g%-4d M=%-4d N=%-4d K=%-4d: rel err %.2e, max abs %.2e\n", ok ? "ok" : "FAIL",
              name, path_name(path), w.bits, w.group_size, M, w.N, w.K, rel, max_abs);
  return ok;
}

template <typename T>
bool validate_all(const char* name) {
  bool ok = true;
  const QuantWeight weights[] = {
      {37, 256, 8, 256, 1},   // 16-byte rows: vector loads, tensor cores
      {37, 200, 8, 200, 2},   // 200-byte rows: byte loads, plain FMA tiles
      {300, 384, 4, 128, 3},  // several GEMV blocks and 128-wide tiles
      {37, 96, 4, 32, 4},     // K = 1.5 k-tiles of 64
      {45, 320, 4, 64, 5},
  };
  for (const QuantWeight& w : weights)
    for (int M : {1, 3, 16, 17, 130})
      for (QuantMatmulPath path : {QuantMatmulPath::gemv, QuantMatmulPath::tiled}) ok = validate<T>(M, w, path, name) && ok;
  // Split-K with partial sums: many k per row, few rows.
  ok = validate<T>(5, QuantWeight(20, 8192, 4, 32, 6), QuantMatmulPath::gemv, name) && ok;
  ok = validate<T>(16, QuantWeight(70, 4096, 8, 4096, 7), QuantMatmulPath::gemv, name) && ok;
  return ok;
}

template <typename T>
void time_case(int M, int N, int K, int bits, int group_size) {
  const QuantWeight w(N, K, bits, group_size, 99u);
  DeviceProblem<T> p(M, w, 7u);
  const QuantMatmulPath path = M <= mini_llm::kQuantGemvMaxRows ? QuantMatmulPath::gemv : QuantMatmulPath::tiled;
  // Copies of the weight that together exceed L2 (50 MB on an H100), visited in turn.
  const int copies = int(std::clamp<size_t>((256u << 20) / w.bytes(), 1, 64));
  std::vector<void*> qweights(copies), scales(copies);
  for (int c = 0; c < copies; ++c) {
    CUDA_CHECK(cudaMalloc(&qweights[c], w.packed.size()));
    CUDA_CHECK(cudaMemcpy(qweights[c], w.packed.data(), w.packed.size(), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMalloc(&scales[c], w.scales16.size() * sizeof(__half)));
    CUDA_CHECK(cudaMemcpy(scales[c], w.scales16.data(), w.scales16.size() * sizeof(__half), cudaMemcpyHostToDevice));
  }
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const int reps = std::max(copies, 50);
  for (int i = 0; i < copies; ++i) CUDA_CHECK(p.launch(path, qweights[i], scales[i]));  // warm-up
  CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) CUDA_CHECK(p.launch(path, qweights[i % copies], scales[i % copies]));
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  ms /= reps;
  const double bytes = double(w.bytes()) + double(M) * (K + N) * sizeof(T);  // weights, x read, out written
  const double bf16_bytes = 2.0 * N * K + double(M) * (K + N) * sizeof(T);   // the same with bf16 weights
  std::printf("%-5s int%d g%-4d M=%-4d N=%d K=%d: %9.2f us  %7.1f GB/s  %6.1f TFLOP/s  (a bf16-weight matmul "
              "at this GB/s: %.2f us)\n",
              path_name(path), bits, group_size, M, N, K, ms * 1e3, bytes / ms / 1e6, 2.0 * M * N * K / ms / 1e9,
              bf16_bytes / (bytes / ms) * 1e3);
  for (int c = 0; c < copies; ++c) {
    CUDA_CHECK(cudaFree(qweights[c]));
    CUDA_CHECK(cudaFree(scales[c]));
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
}

// A device-to-device copy: the bandwidth a memory-bound kernel can hope for (reads + writes counted).
void time_copy() {
  const size_t bytes = size_t(256) << 20;
  void *a = nullptr, *b = nullptr;
  CUDA_CHECK(cudaMalloc(&a, bytes));
  CUDA_CHECK(cudaMalloc(&b, bytes));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < 10; ++i) CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  std::printf("cudaMemcpy d2d 256 MiB: %7.1f GB/s (read + write)\n", 2.0 * bytes * 10 / ms / 1e6);
  CUDA_CHECK(cudaFree(a));
  CUDA_CHECK(cudaFree(b));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
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

  std::printf("\n");
  time_copy();
  std::vector<int> rows = {1, 2048};
  int N = 4096, K = 4096;
  if (argc == 4) rows = {std::atoi(argv[1])}, N = std::atoi(argv[2]), K = std::atoi(argv[3]);
  for (int M : rows) {
    time_case<__nv_bfloat16>(M, N, K, 8, K);
    time_case<__nv_bfloat16>(M, N, K, 4, 128);
  }
  return 0;
}
