// Device building blocks shared by the kernels of every op (attention_*.cu, decode_attention.cu,
// layer_norm.cu, quant_matmul_*.cu), none specific to one op: the launchers' DType dispatch
// (with_dtype), dtype conversions, warp reductions,
// exp2 on the special-function unit, 128-bit loads, cp.async copies, ldmatrix fragment loads and
// the mma.sync tensor-core instructions (sm_80+). Header only (everything here is a template or
// inline), included by each .cu, which the JIT loader and CMake compile on their own.
//
// The fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"),
// with lane = 4 * g + t (g = lane / 4 picks the row, t = lane % 4 the column pair):
//   A (16 x 16, row-major), 4 x 32-bit registers of 2 elements:
//     a0 = A[g][2t, 2t+1]   a1 = A[g+8][2t, 2t+1]   a2 = A[g][2t+8, 2t+9]   a3 = A[g+8][2t+8, 2t+9]
//   B (16 x 8, k x n), 2 registers:  b0 = B[2t, 2t+1][g]   b1 = B[2t+8, 2t+9][g]
//   C (16 x 8, float32), 4 floats:   c0, c1 = C[g][2t, 2t+1]   c2, c3 = C[g+8][2t, 2t+1]
// Two neighbouring C tiles (columns 0-7 and 8-15) hold exactly an A fragment's elements, so a
// product's accumulators turn into the A operand of the next product without leaving registers
// (accumulators_to_a).
//
// ldmatrix.x4 loads four 8 x 8 matrices of 16-bit elements from shared memory; lanes 8i .. 8i+7
// give the 8 row addresses (16 bytes each) of matrix i, and lane 4g + t receives row g, elements
// 2t and 2t+1 of each matrix (with .trans: column g, rows 2t and 2t+1). For a row-major tile X in
// shared memory that gives: A fragments of X (non-trans), B fragments of X^T when X is (n x k),
// e.g. K for Q K^T (non-trans), and B fragments of X when X is (k x n), e.g. V for P V (.trans).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common.h"  // DType

namespace mini_llm::device {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Host and device: blocks / tiles needed to cover a elements in pieces of b.
__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The launchers' one switch from a runtime DType to a compile-time element type: calls
// f(TypeTag<T>{}) (T = typename decltype(tag)::type in a generic lambda) and returns its result.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
cudaError_t with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f16: return f(TypeTag<__half>{});
    case DType::bf16: return f(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

// ---------------------------------------------------------------------------------------------
// Conversions between the element types and float32 (round to nearest even).

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---------------------------------------------------------------------------------------------
// Reductions across lanes.

// Sum / max over each aligned group of kLanes lanes (a power of two, 32 = the whole warp), by an
// xor butterfly from kLanes / 2 down to 1; every lane of the group gets the result.
template <int kLanes = kWarp>
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

template <int kLanes = kWarp>
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

// Max / sum over the 4 lanes of a quad: the 4 lanes that hold one mma accumulator row. (Offsets
// 1 then 2, the reverse of warp_sum<4>: the sum's rounding differs, so the two are kept apart.)
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 1));
  return fmaxf(x, __shfl_xor_sync(kFullMask, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

// 2^x on the special-function unit (ex2.approx: ~2 ulp; ex2(-inf) = +0, which masking relies on).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------------------------
// Vector loads from global memory.

// 16 bytes read once: straight from L2, not kept in L1 (p 16-byte aligned).
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// 32-bit word i (0..3) of a 16-byte vector.
__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

template <int kBytes>
struct Raw;  // an aligned block of kBytes, loaded in one instruction
template <>
struct Raw<8> { using type = uint2; };
template <>
struct Raw<16> { using type = uint4; };

// N (2 or 4) consecutive floats at p (aligned to 4 * N bytes), one vector load.
template <int N>
__device__ __forceinline__ void load_floats(const float* p, float (&out)[N]) {
  using R = typename Raw<4 * N>::type;
  const R raw = *reinterpret_cast<const R*>(p);
  const float* e = reinterpret_cast<const float*>(&raw);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = e[i];
}

// ---------------------------------------------------------------------------------------------
// Asynchronous global -> shared copies (cp.async, sm_80+).

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers (and L1); valid = false writes zeros
// without reading global memory (src must still be a valid address), which is how rows past the
// end of a tensor become zero.
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

// ---------------------------------------------------------------------------------------------
// Tensor-core fragments: ldmatrix and mma.sync (layouts in the header comment).

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

// Lane addresses for ldmatrix.x4 on a row-major shared tile with row stride `ld`, at (row0, col0):
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

// d += a b on tensor cores, float32 accumulators, T = __half or __nv_bfloat16:
//   run:    m16n8k16, a and b as in the header comment;
//   run_k8: m16n8k8, a = 16 x 8 (row g: a[0], row g + 8: a[1]; columns 2t, 2t + 1),
//           b = 8 x 8 (rows 2t, 2t + 1 of column g), d as for m16n8k16;
//   pack:   two floats -> one register of two T (lo in the low half), rounded to nearest.
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
  __device__ __forceinline__ static void run_k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
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
  __device__ __forceinline__ static void run_k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
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

}  // namespace mini_llm::device
