// LayerNorm and RMSNorm over the last dim of a row-major (rows, cols) tensor: forward (optionally
// fused with the residual add s = x + delta), backward, and the deterministic reduction of the
// parameter gradients. Launchers are declared in layer_norm.h; the binding is csrc/bindings.cpp;
// the Python wrapper mini_llm/ops/cuda/layer_norm.py; tests tests/test_cuda_layer_norm.py;
// standalone check + timing csrc/standalone/layer_norm.cu.
//
// How the work is laid out (the same in forward and backward):
// - One row per block (blockDim.x threads), or, for rows of at most 32 * kFloatsPerThread
//   elements, one warp per row and kNarrowRows rows per block. Each thread owns the columns
//   threadIdx.x + k * blockDim.x (in units of VEC elements) and keeps them in registers, so a row
//   is read from global memory once; sums go through warp shuffles, then (rows wider than a warp)
//   one shared-memory exchange between the warps of the row. Accumulation is in fp32.
// - VEC = 16 bytes / sizeof(T) when every pointer is 16-byte aligned and cols % VEC == 0: one
//   128-bit load or store per thread and item; VEC = 1 (scalar) otherwise.
// - Forward: mean (LayerNorm), then the variance from the registers (two passes over registers,
//   one over memory: no catastrophic cancellation), y = (x - mean) * rstd * w + b.
//   Fused: s = x + delta is rounded to T, written, and normalised, as if s were stored first.
// - Backward: with xhat = (x - mean) * rstd and g = dy * w,
//     LayerNorm  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//     RMSNorm    dx = rstd * (g - xhat * mean(g * xhat))
//   (+ ds when fused: s feeds both the residual stream and the norm). A persistent grid walks
//   the rows; each row slot (block, threadIdx.y) sums dy * xhat and dy over its rows per column
//   in registers and writes them to a partials buffer; norm_param_grad_kernel then sums the
//   partials column by column in a fixed order: dweight, dbias, deterministic run to run.
#include "layer_norm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device_common.cuh"

namespace mini_llm {
namespace {

using namespace device;

constexpr int kMaxThreads = 512;        // threads per row (= per block); 512 * 16 = kNormMaxCols
constexpr int kFloatsPerThread = 16;    // elements of a row each thread keeps in registers
constexpr int kNarrowRows = 4;          // rows per block when one warp holds a whole row
static_assert(kMaxThreads * kFloatsPerThread == kNormMaxCols, "kNormMaxCols is what the layout covers");

// VEC elements of T moved as one unit: a 128-bit load / store when VEC * sizeof(T) == 16.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// out = p[i * VEC .. i * VEC + VEC) widened to float.
template <typename T, int VEC>
__device__ __forceinline__ void load(const T* p, int i, float (&out)[VEC]) {
  const Pack<T, VEC> pack = reinterpret_cast<const Pack<T, VEC>*>(p)[i];
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_float(pack.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, int i, const float (&in)[VEC]) {
  Pack<T, VEC> pack;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pack.v[j] = from_float<T>(in[j]);
  reinterpret_cast<Pack<T, VEC>*>(p)[i] = pack;
}

// float32 parameters (weight, bias, partial sums) for the same VEC columns: float4 accesses
// (VEC is 1, 4 or 8; 16-byte alignment was checked by the launcher whenever VEC > 1).
template <int VEC>
__device__ __forceinline__ void load_f32(const float* p, int i, float (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = p[i];
  } else {
#pragma unroll
    for (int j = 0; j < VEC; j += 4) {
      const float4 f = reinterpret_cast<const float4*>(p + i * VEC + j)[0];
      out[j] = f.x, out[j + 1] = f.y, out[j + 2] = f.z, out[j + 3] = f.w;
    }
  }
}

template <int VEC>
__device__ __forceinline__ void store_f32(float* p, int i, const float (&in)[VEC]) {
  if constexpr (VEC == 1) {
    p[i] = in[0];
  } else {
#pragma unroll
    for (int j = 0; j < VEC; j += 4)
      reinterpret_cast<float4*>(p + i * VEC + j)[0] = make_float4(in[j], in[j + 1], in[j + 2], in[j + 3]);
  }
}

// Each v[n] summed over the blockDim.x threads of one row; every thread gets the sums. A row
// wider than a warp (then blockDim.y == 1) exchanges the warps' sums through `scratch`
// (N * kWarp floats of shared memory); the barrier before the writes lets calls follow each other.
template <int N>
__device__ __forceinline__ void row_sum(float (&v)[N], float* scratch) {
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n]);
  if (blockDim.x == kWarp) return;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) scratch[n * kWarp + warp] = v[n];
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(lane < warps ? scratch[n * kWarp + lane] : 0.f);
}

template <typename T>
struct ForwardArgs {
  const T* x;
  const T* delta;  // null: plain norm
  T* s;            // x + delta when fused
  const float* weight;
  const float* bias;  // may be null
  T* y;
  float* mean;  // null for RMSNorm
  float* rstd;
  int64_t rows;
  int cols;
  float eps;
  bool rms;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) norm_forward_kernel(const ForwardArgs<T> a) {
  constexpr int kItems = kFloatsPerThread / VEC;
  __shared__ float scratch[kWarp];
  const int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= a.rows) return;  // only in a narrow-row block, whose warps never sync with each other
  const int nvec = a.cols / VEC;
  const int64_t offset = row * a.cols;

  float v[kItems][VEC];  // this thread's part of the row (x, or s when fused)
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < nvec) load<T, VEC>(a.x + offset, i, v[k]);
  }
  if (a.delta != nullptr) {
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i >= nvec) continue;
      float d[VEC];
      load<T, VEC>(a.delta + offset, i, d);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[k][j] = to_float(from_float<T>(v[k][j] + d[j]));  // s as stored
      store<T, VEC>(a.s + offset, i, v[k]);
    }
  }

  float mean = 0.f;
  if (!a.rms) {
    float sum[1] = {0.f};
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      if (threadIdx.x + k * blockDim.x >= nvec) continue;
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum[0] += v[k][j];
    }
    row_sum(sum, scratch);
    mean = sum[0] / a.cols;
  }
  float sum_sq[1] = {0.f};  // of x - mean: the variance (LayerNorm) or mean square (RMSNorm)
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    if (threadIdx.x + k * blockDim.x >= nvec) continue;
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum_sq[0] += (v[k][j] - mean) * (v[k][j] - mean);
  }
  row_sum(sum_sq, scratch);
  const float rstd = rsqrtf(sum_sq[0] / a.cols + a.eps);
  if (threadIdx.x == 0) {
    if (!a.rms) a.mean[row] = mean;
    a.rstd[row] = rstd;
  }

#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i >= nvec) continue;
    float w[VEC], b[VEC] = {};
    load_f32<VEC>(a.weight, i, w);
    if (a.bias != nullptr) load_f32<VEC>(a.bias, i, b);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[k][j] = (v[k][j] - mean) * rstd * w[j] + b[j];
    store<T, VEC>(a.y + offset, i, v[k]);
  }
}

template <typename T>
struct BackwardArgs {
  const T* dy;
  const T* ds;  // null unless fused (and s is used downstream)
  const T* x;   // what the forward normalised: x, or s when fused
  const float* weight;
  const float* mean;  // null for RMSNorm
  const float* rstd;
  T* dx;
  float* partials;  // (row slots, 2, cols): sum of dy * xhat, then of dy (when want_dbias)
  int64_t rows;
  int cols;
  bool want_dbias;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) norm_backward_kernel(const BackwardArgs<T> a) {
  constexpr int kItems = kFloatsPerThread / VEC;
  __shared__ float scratch[2 * kWarp];
  const int nvec = a.cols / VEC;
  float dw[kItems][VEC] = {}, db[kItems][VEC] = {};  // this row slot's parameter-gradient sums

  // Trip count: the same for every thread of a block when blockDim.x > kWarp (blockDim.y == 1),
  // as row_sum's barriers need; per warp otherwise.
  const int64_t slot = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  for (int64_t row = slot; row < a.rows; row += int64_t(gridDim.x) * blockDim.y) {
    const int64_t offset = row * a.cols;
    float xh[kItems][VEC], dy[kItems][VEC], ds[kItems][VEC];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i >= nvec) continue;
      load<T, VEC>(a.x + offset, i, xh[k]);
      load<T, VEC>(a.dy + offset, i, dy[k]);
      if (a.ds != nullptr) load<T, VEC>(a.ds + offset, i, ds[k]);
    }
    const float mean = a.mean != nullptr ? a.mean[row] : 0.f, rstd = a.rstd[row];
    float sums[2] = {0.f, 0.f};  // of g = dy * w, and of g * xhat
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i >= nvec) continue;
      float w[VEC];
      load_f32<VEC>(a.weight, i, w);  // re-read per row from L1: registers go to the sums
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xh[k][j] = (xh[k][j] - mean) * rstd;
        dw[k][j] += dy[k][j] * xh[k][j];
        db[k][j] += dy[k][j];
        dy[k][j] *= w[j];  // dy becomes g
        sums[0] += dy[k][j];
        sums[1] += dy[k][j] * xh[k][j];
      }
    }
    row_sum(sums, scratch);
    const float mean_g = a.mean != nullptr ? sums[0] / a.cols : 0.f, mean_gx = sums[1] / a.cols;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i >= nvec) continue;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        dy[k][j] = rstd * (dy[k][j] - mean_g - xh[k][j] * mean_gx);
        if (a.ds != nullptr) dy[k][j] += ds[k][j];
      }
      store<T, VEC>(a.dx + offset, i, dy[k]);
    }
  }

  float* out = a.partials + slot * 2 * a.cols;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i >= nvec) continue;
    store_f32<VEC>(out, i, dw[k]);
    if (a.want_dbias) store_f32<VEC>(out + a.cols, i, db[k]);
  }
}

// dweight[c] = sum over slots of partials[slot][0][c], dbias from [slot][1][c] (blockIdx.y == 1).
// Block (32 columns, 16 slot lanes); the order of every sum is fixed: deterministic.
constexpr int kParamLanes = 16;
__global__ void __launch_bounds__(kWarp * kParamLanes)
    norm_param_grad_kernel(const float* partials, int slots, int cols, float* dweight, float* dbias) {
  __shared__ float tile[kParamLanes][kWarp + 1];
  const int col = blockIdx.x * kWarp + threadIdx.x, which = blockIdx.y;
  float acc = 0.f;
  if (col < cols)
    for (int s = threadIdx.y; s < slots; s += kParamLanes) acc += partials[(int64_t(s) * 2 + which) * cols + col];
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || col >= cols) return;
  for (int lane = 1; lane < kParamLanes; ++lane) acc += tile[lane][threadIdx.x];
  (which == 0 ? dweight : dbias)[col] = acc;
}

// Launch shape for rows of `cols` elements: threads per row (a multiple of a warp, each keeping
// at most kFloatsPerThread elements) and rows per block.
dim3 row_block(int cols) {
  const int per_thread = (cols + kFloatsPerThread - 1) / kFloatsPerThread;
  const int threads = std::max(kWarp, (per_thread + kWarp - 1) / kWarp * kWarp);
  return dim3(threads, threads == kWarp ? kNarrowRows : 1);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16 bytes / sizeof(T) when every pointer allows 128-bit accesses, else 1.
template <typename T>
int vector_width(int cols, std::initializer_list<const void*> pointers) {
  constexpr int kVec = 16 / sizeof(T);
  if (cols % kVec != 0) return 1;
  for (const void* p : pointers)
    if (!aligned16(p)) return 1;
  return kVec;
}

bool bad_size(int64_t rows, int cols) { return rows < 0 || cols <= 0 || cols > kNormMaxCols; }

template <typename T>
cudaError_t forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  const dim3 block = row_block(a.cols);
  const unsigned grid = unsigned((a.rows + block.y - 1) / block.y);
  if (vector_width<T>(a.cols, {a.x, a.delta, a.s, a.weight, a.bias, a.y}) > 1)
    norm_forward_kernel<T, 16 / sizeof(T)><<<grid, block, 0, stream>>>(a);
  else
    norm_forward_kernel<T, 1><<<grid, block, 0, stream>>>(a);
  return cudaGetLastError();
}

// Row slots of the backward's persistent grid: as many blocks as fit on the GPU at once (by the
// kernel's register use), no more, since every slot writes a (2, cols) partial that is read again.
// Sized for the vector path whenever the width allows it (the scalar path's use is close).
template <typename T>
cudaError_t backward_slots(int64_t rows, int cols, int* slots) {
  const dim3 block = row_block(cols);
  int device = 0, sms = 0, per_sm = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); err != cudaSuccess)
    return err;
  constexpr int kVec = 16 / sizeof(T);
  const cudaError_t err = cols % kVec == 0
      ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, norm_backward_kernel<T, kVec>, block.x * block.y, 0)
      : cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, norm_backward_kernel<T, 1>, block.x * block.y, 0);
  if (err != cudaSuccess) return err;
  const int64_t blocks = std::min<int64_t>((rows + block.y - 1) / block.y, int64_t(sms) * std::max(1, per_sm));
  *slots = int(std::max<int64_t>(1, blocks) * block.y);
  return cudaSuccess;
}

template <typename T>
cudaError_t backward(const BackwardArgs<T>& a, int slots, float* dweight, float* dbias, cudaStream_t stream) {
  const dim3 block = row_block(a.cols);
  if (slots <= 0 || slots % block.y != 0) return cudaErrorInvalidValue;
  const unsigned grid = unsigned(slots / block.y);
  if (vector_width<T>(a.cols, {a.dy, a.ds, a.x, a.weight, a.dx, a.partials}) > 1)
    norm_backward_kernel<T, 16 / sizeof(T)><<<grid, block, 0, stream>>>(a);
  else
    norm_backward_kernel<T, 1><<<grid, block, 0, stream>>>(a);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  const dim3 param_grid((a.cols + kWarp - 1) / kWarp, a.want_dbias ? 2 : 1);
  norm_param_grad_kernel<<<param_grid, dim3(kWarp, kParamLanes), 0, stream>>>(a.partials, slots, a.cols,
                                                                             dweight, dbias);
  return cudaGetLastError();
}

}  // namespace

cudaError_t norm_forward(const void* x, const void* delta, void* s, const float* weight, const float* bias,
                         void* y, float* mean, float* rstd, int64_t rows, int cols, float eps, bool rms,
                         DType dtype, cudaStream_t stream) {
  if (bad_size(rows, cols) || (delta != nullptr && s == nullptr) || (!rms && mean == nullptr))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return forward(ForwardArgs<T>{static_cast<const T*>(x), static_cast<const T*>(delta), static_cast<T*>(s), weight,
                                  bias, static_cast<T*>(y), rms ? nullptr : mean, rstd, rows, cols, eps, rms},
                   stream);
  });
}

cudaError_t norm_backward_partial_rows(int64_t rows, int cols, DType dtype, int* partial_rows) {
  if (bad_size(rows, cols)) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto tag) {
    return backward_slots<typename decltype(tag)::type>(rows, cols, partial_rows);
  });
}

cudaError_t norm_backward(const void* dy, const void* ds, const void* xs, const float* weight,
                          const float* mean, const float* rstd, void* dx, float* partials, int partial_rows,
                          float* dweight, float* dbias, int64_t rows, int cols, bool rms, DType dtype,
                          cudaStream_t stream) {
  if (bad_size(rows, cols) || (!rms && mean == nullptr)) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // The kernel reads "no mean" as RMSNorm.
    return backward(BackwardArgs<T>{static_cast<const T*>(dy), static_cast<const T*>(ds), static_cast<const T*>(xs),
                                    weight, rms ? nullptr : mean, rstd, static_cast<T*>(dx), partials, rows, cols,
                                    dbias != nullptr},
                    partial_rows, dweight, dbias, stream);
  });
}

}  // namespace mini_llm
