// Shared by the attention kernels (attention_fwd.cu, attention_bwd.cu, attention_fp32.cu): their
// parameter structs, the float32 launchers, and the device building blocks of the tensor-core
// kernels: cp.async tile copies, ldmatrix fragment loads and the m16n8k16 MMA (sm_80+).
//
// The fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"),
// with lane = 4 * g + t (g = lane / 4 picks the row, t = lane % 4 the column pair):
//   A (16 x 16, row-major), 4 x 32-bit registers of 2 elements:
//     a0 = A[g][2t, 2t+1]   a1 = A[g+8][2t, 2t+1]   a2 = A[g][2t+8, 2t+9]   a3 = A[g+8][2t+8, 2t+9]
//   B (16 x 8, k x n), 2 registers:  b0 = B[2t, 2t+1][g]   b1 = B[2t+8, 2t+9][g]
//   C (16 x 8, float32), 4 floats:   c0, c1 = C[g][2t, 2t+1]   c2, c3 = C[g+8][2t, 2t+1]
// Two neighbouring C tiles (columns 0-7 and 8-15) hold exactly an A fragment's elements, so a
// score tile S (query rows x keys) turns into the A operand of P @ V without leaving registers.
//
// ldmatrix.x4 loads four 8 x 8 matrices of 16-bit elements from shared memory; lanes 8i .. 8i+7
// give the 8 row addresses (16 bytes each) of matrix i, and lane 4g + t receives row g, elements
// 2t and 2t+1 of each matrix (with .trans: column g, rows 2t and 2t+1). For a row-major tile X in
// shared memory that gives: A fragments of X (non-trans), B fragments of X^T when X is (n x k),
// e.g. K for Q K^T (non-trans), and B fragments of X when X is (k x n), e.g. V for P V (.trans).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "attention.h"

namespace mini_llm::attention_detail {

// Every attention kernel runs blocks of 8 warps.
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

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers (and L1); src_bytes = 0 writes zeros
// without reading global memory, which is how rows past the end of a sequence become zero.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}

// 4-byte version (cp.async.cg only takes 16 bytes; .ca caches in L1 too): per-row floats.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

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

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// Lane addresses for ldmatrix.x4 on a padded row-major tile with row stride `ld`, at (row0, col0):
// A fragment of the 16 x 16 block (matrices: rows 0-7 / 8-15 x cols 0-7, then cols 8-15).
template <typename T>
__device__ __forceinline__ const T* a_fragment_address(const T* tile, int ld, int row0, int col0, int lane) {
  return tile + (row0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + col0 + (lane >> 4) * 8;
}

// B fragments of X^T for the two n8 tiles of a 16 (n) x 16 (k) block of X stored (n, k) row-major:
// r[0], r[1] = b0, b1 of columns n0..n0+7; r[2], r[3] = those of n0+8..n0+15.
template <typename T>
__device__ __forceinline__ const T* bt_fragment_address(const T* tile, int ld, int n0, int k0, int lane) {
  return tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8;
}

// With ldmatrix_x4_trans: B fragments of X for a 16 (k) x 16 (n) block of X stored (k, n)
// row-major; same register order as bt_fragment_address. (The address pattern is the A one.)
template <typename T>
__device__ __forceinline__ const T* b_fragment_address(const T* tile, int ld, int k0, int n0, int lane) {
  return a_fragment_address(tile, ld, k0, n0, lane);
}

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <>
struct Mma<__half> {
  __device__ __forceinline__ static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

// Two neighbouring 16 x 8 float accumulator tiles -> one A fragment (16 x 16) in T.
template <typename T>
__device__ __forceinline__ void accumulators_to_a(uint32_t (&a)[4], const float (&left)[4], const float (&right)[4]) {
  a[0] = Mma<T>::pack(left[0], left[1]);
  a[1] = Mma<T>::pack(left[2], left[3]);
  a[2] = Mma<T>::pack(right[0], right[1]);
  a[3] = Mma<T>::pack(right[2], right[3]);
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

// 2^x on the special-function unit (ex2.approx: ~2 ulp; ex2(-inf) = +0, which masking relies on).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Max / sum over the 4 lanes of a quad: the 4 lanes that hold one accumulator row.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace mini_llm::attention_detail
