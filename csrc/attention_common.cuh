// Shared by the attention kernels (attention_fwd.cu, attention_bwd.cu, attention_fp32.cu): their
// parameter structs, the float32 launchers, and the attention-specific pieces of the tensor-core
// kernels: the padded shared tiles (kPad), the cp.async copy of a head's rows into one
// (load_tile_async) and the staged store of a warp's accumulator rows (store_accumulator_rows).
// The op-independent device helpers they are built from (cp.async, ldmatrix, mma.sync, fragment
// layouts, exp2, quad reductions) are in device_common.cuh, visible here as attention_detail::*.
#pragma once

#include <cstdint>

#include "attention.h"
#include "device_common.cuh"

namespace mini_llm::attention_detail {

using namespace device;

// The tensor-core kernels run blocks of 8 warps (the float32 ones, 4: see attention_fp32.cu).
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <typename T>
struct FwdParams {
  const T* q;
  const T* k;
  const T* v;
  T* out;      // (B, nh, Tq, hs) contiguous
  float* lse;  // (B, nh, Tq)
  AttentionStrides qs, ks, vs;
  int heads, t_q, t_k;
  float scale_log2;  // scale * log2(e): softmax runs on exp2, exp(x * scale) = exp2(x * scale_log2)
};

template <typename T>
struct BwdParams {
  const T* q;
  const T* k;
  const T* v;
  const T* o;
  const T* dout;
  const float* lse;  // (B, nh, Tq), natural log
  float* delta;      // (B, nh, Tq): rowsum(dO * O), filled by the first backward kernel
  T* dq;             // dq (B, nh, Tq, hs), dk and dv (B, nh, Tk, hs): contiguous
  T* dk;
  T* dv;
  AttentionStrides qs, ks, vs, os, dos;
  int heads, t_q, t_k;
  float scale, scale_log2;
};

// The float32 kernels (attention_fp32.cu); backward_fp32 expects p.delta already filled.
cudaError_t forward_fp32(const FwdParams<float>& p, int batch, int head_dim, bool causal, cudaStream_t stream);
cudaError_t backward_fp32(const BwdParams<float>& p, int batch, int head_dim, bool causal, cudaStream_t stream);

// Shared-memory tiles are row-major with rows padded by 8 elements (16 bytes): the 8 row
// addresses of one ldmatrix then start in 8 different 16-byte bank groups (no bank conflicts),
// which is the simplest alternative to an XOR swizzle.
constexpr int kPad = 8;

// Copy rows [row0, row0 + kRows) of one (T, kHeadDim) head into a padded shared tile; rows at or
// past `rows` are zero-filled. `head` points at row 0 of the head (a valid address even when the
// whole tile lies past the end: a zero-fill copy still needs one). Called by all kThreads threads.
template <int kRows, int kHeadDim, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* tile, const T* head, int64_t row_stride, int row0,
                                                int rows) {
  constexpr int kChunksPerRow = kHeadDim * static_cast<int>(sizeof(T)) / 16;
  constexpr int kElemsPerChunk = 16 / static_cast<int>(sizeof(T));
  static_assert(kRows * kChunksPerRow % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kRows * kChunksPerRow / kThreads; ++i) {
    const int chunk = i * kThreads + static_cast<int>(threadIdx.x);
    const int r = chunk / kChunksPerRow;
    const int col = (chunk % kChunksPerRow) * kElemsPerChunk;
    const bool valid = row0 + r < rows;
    const T* src = valid ? head + (row0 + r) * row_stride + col : head;
    cp_async_16(tile + r * (kHeadDim + kPad) + col, src, valid);
  }
}

// A warp's 16 x kHeadDim float accumulator (rows row0 .. row0 + 15) -> rows of a contiguous
// (rows, kHeadDim) global matrix `dst`, row r scaled by factor[r / 8 == 0 ? 0 : 1] (accumulator
// rows g and g + 8). Staged through `staging`, 16 padded shared rows that only this warp uses,
// so the global writes are whole 16-byte chunks; rows at or past `rows` are not written.
template <typename T, int kHeadDim>
__device__ __forceinline__ void store_accumulator_rows(T* dst, int row0, int rows, T* staging,
                                                       const float (&acc)[kHeadDim / 8][4],
                                                       const float (&factor)[2], int lane) {
  constexpr int kLd = kHeadDim + kPad;
  const int g = lane / 4, t = lane % 4;
  __syncwarp();  // every lane is done reading `staging` (it held this warp's input rows)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int dt = 0; dt < kHeadDim / 8; ++dt)
      *reinterpret_cast<uint32_t*>(staging + (g + 8 * r) * kLd + dt * 8 + 2 * t) =
          Mma<T>::pack(acc[dt][2 * r] * factor[r], acc[dt][2 * r + 1] * factor[r]);
  }
  __syncwarp();
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
#pragma unroll
  for (int c = lane; c < 16 * kChunksPerRow; c += 32) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    if (row0 + r < rows)
      *reinterpret_cast<int4*>(dst + static_cast<int64_t>(row0 + r) * kHeadDim + col) =
          *reinterpret_cast<const int4*>(staging + r * kLd + col);
  }
}

}  // namespace mini_llm::attention_detail
