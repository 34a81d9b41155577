// Standalone check and benchmark of the LayerNorm / RMSNorm launchers of csrc/layer_norm.cu, in
// the style of llm.c's dev/cuda: random inputs, a CPU reference in double, every launcher
// variant validated (LayerNorm with and without bias, RMSNorm; plain and fused with the residual
// add; forward, backward and the parameter gradients; fp32 / fp16 / bf16; the 128-bit vector path
// and the scalar path for widths that are not a multiple of 16 bytes), then timed with cudaEvents
// against a device-to-device copy of the same bytes. No Python, so Nsight Compute and
// compute-sanitizer can run it directly.
//
// Build and run (repository root):
//   cmake -B build -S . && cmake --build build -j2 --target layer_norm
//   ./build/layer_norm [rows cols]            # validation shapes, then timing at rows x cols (16384 x 4096)
//   compute-sanitizer --tool memcheck ./build/layer_norm 64 1000     (and --tool racecheck)
//   ncu --set full -k regex:norm_ ./build/layer_norm 16384 4096
//
// The kernels (see csrc/layer_norm.cu): norm_forward_kernel<T, VEC> keeps each thread's share of a
// row in registers (one block, or one warp for narrow rows, per row; VEC = 16 bytes / sizeof(T)
// when aligned, else 1); norm_backward_kernel<T, VEC> walks the rows with a persistent grid and
// writes per-slot dweight / dbias partials, which norm_param_grad_kernel sums deterministically.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "layer_norm.h"
#include "standalone/common.h"

using namespace mini_llm;

struct Variant {
  const char* name;
  bool rms, bias, fused;
};
constexpr Variant kVariants[] = {
    {"layer_norm", false, true, false},      {"layer_norm (no bias)", false, false, false},
    {"rms_norm", true, false, false},        {"add_layer_norm", false, true, true},
    {"add_rms_norm", true, false, true},
};

template <typename T>
T* device_copy(const std::vector<T>& host) {
  T* p = poisoned<T>(host.size());
  CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// ||got - want|| / ||want||, or infinity if anything is NaN; prints one line, returns pass/fail.
bool check(const char* what, const std::vector<double>& got, const std::vector<double>& want, double tol) {
  double diff = 0, norm = 0, worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = got[i] - want[i];
    diff += d * d, norm += want[i] * want[i];
    worst = std::isnan(d) ? INFINITY : std::fmax(worst, std::fabs(d));
  }
  const double rel = std::isnan(diff) ? INFINITY : std::sqrt(diff / std::fmax(norm, 1e-300));
  const bool ok = rel <= tol && std::isfinite(worst);
  if (!ok) std::printf("    FAIL %-8s relative error %.2e (tolerance %.0e), max abs %.2e\n", what, rel, tol, worst);
  return ok;
}

// The CPU reference in double. x_in: the normalised input (x, or s = round_T(x + delta)).
struct Reference {
  std::vector<double> y, dx, dw, db;
};

Reference reference(const Variant& v, int64_t rows, int cols, const std::vector<double>& x_in,
                    const std::vector<double>& w, const std::vector<double>& b, const std::vector<double>& dy,
                    const std::vector<double>& ds, double eps) {
  Reference r{std::vector<double>(rows * cols), std::vector<double>(rows * cols), std::vector<double>(cols, 0.0),
              std::vector<double>(cols, 0.0)};
  std::vector<double> xhat(cols);
  for (int64_t row = 0; row < rows; ++row) {
    const double* x = &x_in[row * cols];
    double mean = 0, var = 0;
    if (!v.rms) {
      for (int c = 0; c < cols; ++c) mean += x[c];
      mean /= cols;
    }
    for (int c = 0; c < cols; ++c) var += (x[c] - mean) * (x[c] - mean);
    const double rstd = 1.0 / std::sqrt(var / cols + eps);
    double mean_g = 0, mean_gx = 0;
    for (int c = 0; c < cols; ++c) {
      xhat[c] = (x[c] - mean) * rstd;
      r.y[row * cols + c] = xhat[c] * w[c] + (v.bias ? b[c] : 0.0);
      const double g = dy[row * cols + c] * w[c];
      mean_g += g / cols, mean_gx += g * xhat[c] / cols;
      r.dw[c] += dy[row * cols + c] * xhat[c];
      r.db[c] += dy[row * cols + c];
    }
    if (v.rms) mean_g = 0;
    for (int c = 0; c < cols; ++c)
      r.dx[row * cols + c] = rstd * (dy[row * cols + c] * w[c] - mean_g - xhat[c] * mean_gx) +
                             (v.fused ? ds[row * cols + c] : 0.0);
  }
  return r;
}

// Inputs and outputs of one variant on the device.
template <typename T>
struct Run {
  int64_t rows = 0;
  int cols = 0;
  Variant v = {};
  T *x = nullptr, *delta = nullptr, *s = nullptr, *y = nullptr, *dy = nullptr, *ds = nullptr, *dx = nullptr;
  float *w = nullptr, *b = nullptr, *mean = nullptr, *rstd = nullptr, *partials = nullptr, *dw = nullptr,
        *db = nullptr;
  int partial_rows = 0;
  cudaError_t forward(cudaStream_t stream = 0) const {
    return norm_forward(x, v.fused ? delta : nullptr, v.fused ? s : nullptr, w, v.bias ? b : nullptr, y, mean, rstd,
                        rows, cols, 1e-5f, v.rms, Host<T>::dtype, stream);
  }
  cudaError_t backward(cudaStream_t stream = 0) const {
    return norm_backward(dy, v.fused ? ds : nullptr, v.fused ? s : x, w, mean, rstd, dx, partials, partial_rows, dw,
                         v.bias ? db : nullptr, rows, cols, v.rms, Host<T>::dtype, stream);
  }
  size_t forward_bytes() const {  // what the forward must move: x (+ delta) in, y (+ s) out
    return size_t(rows) * cols * sizeof(T) * (v.fused ? 4 : 2);
  }
  size_t backward_bytes() const {  // x_in, dy (+ ds) in, dx out
    return size_t(rows) * cols * sizeof(T) * (v.fused ? 4 : 3);
  }
};

template <typename T>
Run<T> make_run(const Variant& v, int64_t rows, int cols, std::mt19937& rng, std::vector<double> host[6]) {
  std::normal_distribution<float> normal(0.f, 1.f);
  const size_t n = size_t(rows) * cols;
  auto random = [&](size_t count, float shift, float scale, std::vector<double>& as_double) {
    std::vector<T> out(count);
    as_double.resize(count);
    for (size_t i = 0; i < count; ++i) {
      out[i] = Host<T>::from(shift + scale * normal(rng));
      as_double[i] = Host<T>::to_float(out[i]);
    }
    return out;
  };
  auto random_f32 = [&](size_t count, float shift, float scale, std::vector<double>& as_double) {
    std::vector<float> out(count);
    as_double.resize(count);
    for (size_t i = 0; i < count; ++i) as_double[i] = out[i] = shift + scale * normal(rng);
    return out;
  };
  Run<T> r;
  r.rows = rows, r.cols = cols, r.v = v;
  // host[]: x, delta, w, b, dy, ds as doubles (the values the device sees)
  r.x = device_copy(random(n, 0.5f, 2.f, host[0]));  // a mean and a spread: centring matters
  r.delta = device_copy(random(n, 0.f, 1.f, host[1]));
  r.w = device_copy(random_f32(cols, 1.f, 0.5f, host[2]));
  r.b = device_copy(random_f32(cols, 0.f, 0.5f, host[3]));
  r.dy = device_copy(random(n, 0.f, 1.f, host[4]));
  r.ds = device_copy(random(n, 0.f, 1.f, host[5]));
  r.s = poisoned<T>(n), r.y = poisoned<T>(n), r.dx = poisoned<T>(n);
  r.mean = poisoned<float>(rows), r.rstd = poisoned<float>(rows);
  CUDA_CHECK(norm_backward_partial_rows(rows, cols, Host<T>::dtype, &r.partial_rows));
  r.partials = poisoned<float>(size_t(r.partial_rows) * 2 * cols);
  r.dw = poisoned<float>(cols), r.db = poisoned<float>(cols);
  return r;
}

template <typename T>
void free_run(Run<T>& r) {
  for (void* p : {(void*)r.x, (void*)r.delta, (void*)r.s, (void*)r.y, (void*)r.dy, (void*)r.ds, (void*)r.dx,
                  (void*)r.w, (void*)r.b, (void*)r.mean, (void*)r.rstd, (void*)r.partials, (void*)r.dw, (void*)r.db})
    CUDA_CHECK(cudaFree(p));
}

template <typename T>
bool validate(const Variant& v, int64_t rows, int cols, std::mt19937& rng) {
  std::vector<double> host[6];
  Run<T> r = make_run<T>(v, rows, cols, rng, host);
  CUDA_CHECK(r.forward());
  CUDA_CHECK(r.backward());
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> x_in = host[0];
  if (v.fused)  // s is rounded to T, then normalised: the reference does the same
    for (size_t i = 0; i < x_in.size(); ++i) x_in[i] = Host<T>::to_float(Host<T>::from(float(host[0][i] + host[1][i])));
  const Reference want = reference(v, rows, cols, x_in, host[2], host[3], host[4], host[5], 1e-5);
  const double tol = Host<T>::tolerance;
  bool ok = check("y", download(r.y, rows * cols), want.y, tol);
  if (v.fused) ok &= check("s", download(r.s, rows * cols), x_in, tol);
  ok &= check("dx", download(r.dx, rows * cols), want.dx, tol);
  ok &= check("dweight", download(r.dw, cols), want.dw, std::fmax(tol, 1e-4));
  if (v.bias) ok &= check("dbias", download(r.db, cols), want.db, std::fmax(tol, 1e-4));
  std::printf("  %-5s %-22s %6lld x %-5d %s\n", dtype_name(Host<T>::dtype), v.name, (long long)rows, cols,
              ok ? "ok" : "FAILED");
  free_run(r);
  return ok;
}

template <typename F>
float time_ms(F&& launch, int repeats = 20) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) CUDA_CHECK(launch());  // warm-up
  CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < repeats; ++i) CUDA_CHECK(launch());
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return ms / repeats;
}

template <typename T>
void benchmark(int64_t rows, int cols, std::mt19937& rng) {
  // The copy baseline: read + write of rows x cols elements, what a memory-bound norm approaches.
  const size_t bytes = size_t(rows) * cols * sizeof(T);
  void *src, *dst;
  CUDA_CHECK(cudaMalloc(&src, bytes));
  CUDA_CHECK(cudaMalloc(&dst, bytes));
  const float copy_ms = time_ms([&] { return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice); });
  const double copy_gbs = 2.0 * bytes / copy_ms / 1e6;
  CUDA_CHECK(cudaFree(src));
  CUDA_CHECK(cudaFree(dst));
  std::printf("  %-5s copy %lld x %d: %.3f ms, %.0f GB/s\n", dtype_name(Host<T>::dtype), (long long)rows, cols,
              copy_ms, copy_gbs);
  for (const Variant& v : kVariants) {
    std::vector<double> host[6];
    Run<T> r = make_run<T>(v, rows, cols, rng, host);
    const float fwd = time_ms([&] { return r.forward(); });
    const float bwd = time_ms([&] { return r.backward(); });
    const double fwd_gbs = r.forward_bytes() / fwd / 1e6, bwd_gbs = r.backward_bytes() / bwd / 1e6;
    std::printf("  %-5s %-22s forward %.3f ms %5.0f GB/s (%3.0f%% of copy)   backward %.3f ms %5.0f GB/s (%3.0f%%)\n",
                dtype_name(Host<T>::dtype), v.name, fwd, fwd_gbs, 100 * fwd_gbs / copy_gbs, bwd, bwd_gbs,
                100 * bwd_gbs / copy_gbs);
    free_run(r);
  }
}

int main(int argc, char** argv) {
  const int64_t rows = argc > 2 ? std::atoll(argv[1]) : 16384;
  const int cols = argc > 2 ? std::atoi(argv[2]) : 4096;
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::mt19937 rng(1234);

  // Odd widths take the scalar path (not a multiple of 16 bytes); 1 row; a warp-per-row width;
  // the widest row; the timing shape's width.
  const struct { int64_t rows; int cols; } shapes[] = {{1, 1}, {3, 37}, {257, 1000}, {100, 1001}, {64, 768},
                                                       {17, 8192}, {5, 8191}, {33, cols}};
  bool ok = true;
  std::printf("validation against the CPU reference (double):\n");
  for (const auto& shape : shapes)
    for (const Variant& v : kVariants) {
      ok &= validate<float>(v, shape.rows, shape.cols, rng);
      ok &= validate<__half>(v, shape.rows, shape.cols, rng);
      ok &= validate<__nv_bfloat16>(v, shape.rows, shape.cols, rng);
    }
  std::printf(ok ? "all variants match the reference\n" : "SOME VARIANTS FAILED\n");

  std::printf("timing (cudaEvents, mean of 20 after 3 warm-ups):\n");
  benchmark<float>(rows, cols, rng);
  benchmark<__half>(rows, cols, rng);
  benchmark<__nv_bfloat16>(rows, cols, rng);
  return ok ? 0 : 1;
}
