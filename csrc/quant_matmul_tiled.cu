// Weight-only quantized matmul, the tiled paths (M > 16 rows of x: prefill). Called by
// quant_matmul (quant_matmul.cu) through quant_detail::tiled; the weight format and the whole op
// are described there and in quant_matmul.h. Tests tests/test_cuda_quant_matmul.py; standalone
// check and timing csrc/standalone/quant_matmul.cu.
//
// - quant_mma_kernel, float16 / bfloat16 x: 128 x 128 tiles, BK = 64, a 4-stage cp.async
//   pipeline, 8 warps of 64 x 32, tensor cores (mma.sync m16n8k16, fp32 accumulate). Inside a
//   k-tile the 64 k are permuted, identically for x and W (a dot product does not care about the
//   order of its terms): thread t of a quad takes physical k 16t .. 16t + 15 for all four k16
//   steps, so its B fragments are one 16-byte (int8) or 8-byte (int4) shared load and its A
//   fragments two 16-byte loads per row (x rows XOR-swizzled: conflict-free). Weights are
//   dequantized into half2 / bfloat162 registers with the GEMV's magic-number trick
//   (quant_matmul_gemv.cu; int4: q * scale rounded once to x's dtype, as dequantize-then-matmul
//   would; int8: q exactly, the channel scale applied to the fp32 accumulator).
// - quant_simt_kernel, the rest (float32 x, or pointers / K that the 16-byte paths cannot take):
//   64 x 64 tiles in shared memory, weights dequantized to fp32 (q * scale is exact in fp32),
//   4 x 4 outputs per thread with plain FMAs. Simple and correct, not fast.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "device_common.cuh"
#include "quant_matmul_common.cuh"

namespace mini_llm::quant_detail {
namespace {

using namespace device;

// ---------------------------------------------------------------------------------------------
// Tensor-core path (float16 / bfloat16 x, 16-byte aligned rows).

constexpr int kMmaBM = 128, kMmaBN = 128, kMmaBK = 64, kMmaStages = 4, kMmaThreads = 256;
constexpr int kMmaWarpsN = 4, kMmaWarpM = 64, kMmaWarpN = 32;  // 2 x 4 warps
constexpr int kMmaMTiles = kMmaWarpM / 16, kMmaNTiles = kMmaWarpN / 8;
static_assert((kMmaThreads / kWarp) * kMmaWarpM * kMmaWarpN == kMmaBM * kMmaBN, "warps tile the block");

template <int BITS> __host__ __device__ constexpr int mma_w_row_bytes() { return kMmaBK * BITS / 8; }
template <int BITS> __host__ __device__ constexpr int mma_stage_bytes() { return kMmaBM * kMmaBK * 2 + kMmaBN * mma_w_row_bytes<BITS>(); }

template <typename T>
struct TiledArgs {
  const T* x;              // (M, K)
  const uint8_t* qweight;  // (N, K * bits / 8)
  const __half* scales;    // (N, K / group_size)
  T* out;                  // (M, N)
  int M, N, K, group_size;
};

template <typename T> struct Pair;
template <> struct Pair<__half> { using type = __half2; };
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };

template <typename P> __device__ __forceinline__ uint32_t bits_of(P p) {
  uint32_t u;
  memcpy(&u, &p, sizeof(u));
  return u;
}
template <typename P> __device__ __forceinline__ P pair_of(uint32_t u) {
  P p;
  memcpy(&p, &u, sizeof(u));
  return p;
}

// Four int8 (one word) -> the pairs (q0, q1), (q2, q3) in T, exact.
template <typename T>
__device__ __forceinline__ void int8x4_to_pairs(uint32_t v, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = v ^ 0x80808080u;  // q + 128 per byte
  if constexpr (std::is_same_v<T, __half>) {
    // 0x64uu as a half is 1024 + uu (exact: half has 10 mantissa bits); minus 1152 = q.
    const __half2 bias = __float2half2_rn(1152.f);
    lo = bits_of(__hsub2(pair_of<__half2>(__byte_perm(u, 0x64646464u, 0x5140)), bias));
    hi = bits_of(__hsub2(pair_of<__half2>(__byte_perm(u, 0x64646464u, 0x7362)), bias));
  } else {
    // bfloat16's 7 mantissa bits cannot hold q + 128: go through float (exact), keep the upper
    // halves (q has at most 8 significant bits: bfloat16 holds it exactly).
    float f[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440 | i)) - 8388736.f;
    lo = __byte_perm(__float_as_uint(f[0]), __float_as_uint(f[1]), 0x7632);
    hi = __byte_perm(__float_as_uint(f[2]), __float_as_uint(f[3]), 0x7632);
  }
}

// Byte `b` of v (two int4: low nibble, high nibble) -> the pair (q_low, q_high) * scale in T.
template <typename T>
__device__ __forceinline__ uint32_t int4x2_to_pair(uint32_t v, uint32_t v_shr4, int b, typename Pair<T>::type scale) {
  using P = typename Pair<T>::type;
  // Byte b of v into the low half, byte b of v >> 4 into the high half; keep one nibble of each
  // and OR in the exponent of 1024 (half) / 128 (bfloat16): 1024 + u / 128 + u, exact.
  const uint32_t both = __byte_perm(v, v_shr4, b | (b << 4) | ((b + 4) << 8) | ((b + 4) << 12));
  constexpr bool kHalf = std::is_same_v<T, __half>;
  const uint32_t magic = (both & 0x000F000Fu) | (kHalf ? 0x64006400u : 0x43004300u);
  P q;
  if constexpr (kHalf)
    q = __hsub2(pair_of<P>(magic), __float2half2_rn(1032.f));  // u - 8, exact
  else
    q = __hsub2(pair_of<P>(magic), __float2bfloat162_rn(136.f));
  return bits_of(__hmul2(q, scale));
}

template <typename T, int BITS>
__device__ __forceinline__ void mma_load_tile(unsigned char* stage, const TiledArgs<T>& a, int m0, int n0, int k0) {
  T* xs = reinterpret_cast<T*>(stage);  // (BM, BK), 16-byte chunk c of row r at c ^ (r % 8)
  unsigned char* ws = stage + kMmaBM * kMmaBK * sizeof(T);  // (BN, BK * BITS / 8)
  for (int i = threadIdx.x; i < kMmaBM * (kMmaBK / 8); i += kMmaThreads) {
    const int row = i / (kMmaBK / 8), c = i % (kMmaBK / 8);
    const int m = m0 + row, k = k0 + c * 8;
    const bool inside = m < a.M && k < a.K;  // outside: zero-filled, nothing read
    cp_async_16(xs + row * kMmaBK + (c ^ (row % 8)) * 8, inside ? a.x + size_t(m) * a.K + k : a.x, inside);
  }
  constexpr int kRowChunks = mma_w_row_bytes<BITS>() / 16;
  for (int i = threadIdx.x; i < kMmaBN * kRowChunks; i += kMmaThreads) {
    const int row = i / kRowChunks, c = i % kRowChunks;
    const int n = n0 + row, k = k0 + c * chunk_k(BITS);
    const bool inside = n < a.N && k < a.K;
    const uint8_t* src = inside ? a.qweight + size_t(n) * a.K * BITS / 8 + size_t(k) * BITS / 8 : a.qweight;
    cp_async_16(ws + row * mma_w_row_bytes<BITS>() + c * 16, src, inside);
  }
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kMmaThreads) quant_mma_kernel(const TiledArgs<T> a, int n_blocks) {
  using P = typename Pair<T>::type;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  const int m0 = blockIdx.x / n_blocks * kMmaBM, n0 = blockIdx.x % n_blocks * kMmaBN;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int g = lane / 4, t = lane % 4;  // mma fragment coordinates: group, thread in group
  const int wm0 = warp / kMmaWarpsN * kMmaWarpM, wn0 = warp % kMmaWarpsN * kMmaWarpN;
  const int k_tiles = (a.K + kMmaBK - 1) / kMmaBK;
  const int groups = a.K / a.group_size;
  auto stage = [&](int kt) { return dynamic_smem + (kt % kMmaStages) * mma_stage_bytes<BITS>(); };

  // int4: the group scale of each of this thread's n-tiles for k-tile kt (its 16 k lie in one group).
  auto load_scales = [&](int kt, float (&s)[kMmaNTiles]) {
    const int k = kt * kMmaBK + 16 * t;
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j) {
      const int n = n0 + wn0 + 8 * j + g;
      s[j] = BITS == 4 && n < a.N && k < a.K ? __half2float(a.scales[size_t(n) * groups + k / a.group_size]) : 0.f;
    }
  };

  float acc[kMmaMTiles][kMmaNTiles][4];
#pragma unroll
  for (int i = 0; i < kMmaMTiles; ++i)
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  for (int kt = 0; kt < kMmaStages - 1; ++kt) {
    if (kt < k_tiles) mma_load_tile<T, BITS>(stage(kt), a, m0, n0, kt * kMmaBK);
    cp_async_commit();
  }
  float scale_next[kMmaNTiles];
  load_scales(0, scale_next);

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kMmaStages - 2>();  // tile kt has landed (for this thread) ...
    __syncthreads();                  // ... for every thread; and tile kt - 1 is no longer read
    if (kt + kMmaStages - 1 < k_tiles) mma_load_tile<T, BITS>(stage(kt + kMmaStages - 1), a, m0, n0, (kt + kMmaStages - 1) * kMmaBK);
    cp_async_commit();

    P scale[kMmaNTiles];
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j) {
      if constexpr (std::is_same_v<T, __half>)
        scale[j] = __float2half2_rn(scale_next[j]);  // exact: the scale is a half
      else
        scale[j] = __float2bfloat162_rn(scale_next[j]);
    }
    if constexpr (BITS == 4) load_scales(kt + 1, scale_next);  // ready by the next tile

    const T* xs = reinterpret_cast<const T*>(stage(kt));
    const unsigned char* ws = stage(kt) + kMmaBM * kMmaBK * sizeof(T);
    // This thread's packed weights for the whole k-tile: row wn0 + 8j + g, physical k 16t .. 16t+15.
    uint4 w8[kMmaNTiles];
    uint2 w4[kMmaNTiles];
#pragma unroll
    for (int j = 0; j < kMmaNTiles; ++j) {
      const unsigned char* row = ws + (wn0 + 8 * j + g) * mma_w_row_bytes<BITS>();
      if constexpr (BITS == 8)
        w8[j] = *reinterpret_cast<const uint4*>(row + 16 * t);
      else
        w4[j] = *reinterpret_cast<const uint2*>(row + 8 * t);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // k16 steps 2h, 2h + 1: physical k 16t + 8h .. + 8 of each row
      uint4 a_lo[kMmaMTiles], a_hi[kMmaMTiles];  // rows g and g + 8 of each m-tile
#pragma unroll
      for (int i = 0; i < kMmaMTiles; ++i) {
        const int r = wm0 + 16 * i + g;  // r % 8 == (r + 8) % 8 == g
        a_lo[i] = *reinterpret_cast<const uint4*>(xs + r * kMmaBK + ((2 * t + h) ^ g) * 8);
        a_hi[i] = *reinterpret_cast<const uint4*>(xs + (r + 8) * kMmaBK + ((2 * t + h) ^ g) * 8);
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int s = 2 * h + e;  // k16 step: physical k 16t + 4s .. + 4
        uint32_t b[kMmaNTiles][2];
#pragma unroll
        for (int j = 0; j < kMmaNTiles; ++j) {
          if constexpr (BITS == 8) {
            int8x4_to_pairs<T>(word_of(w8[j], s), b[j][0], b[j][1]);
          } else {
            const uint32_t v = s < 2 ? w4[j].x : w4[j].y;
            b[j][0] = int4x2_to_pair<T>(v, v >> 4, 2 * (s % 2), scale[j]);
            b[j][1] = int4x2_to_pair<T>(v, v >> 4, 2 * (s % 2) + 1, scale[j]);
          }
        }
#pragma unroll
        for (int i = 0; i < kMmaMTiles; ++i) {
          const uint32_t frag[4] = {word_of(a_lo[i], 2 * e), word_of(a_hi[i], 2 * e), word_of(a_lo[i], 2 * e + 1),
                                    word_of(a_hi[i], 2 * e + 1)};
#pragma unroll
          for (int j = 0; j < kMmaNTiles; ++j) Mma<T>::run(acc[i][j], frag, b[j][0], b[j][1]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Accumulator (i, j): rows g, g + 8 of m-tile i, columns 2t, 2t + 1 of n-tile j.
#pragma unroll
  for (int j = 0; j < kMmaNTiles; ++j) {
    const int n = n0 + wn0 + 8 * j + 2 * t;
    float channel_scale[2] = {1.f, 1.f};
    if constexpr (BITS == 8) {
      channel_scale[0] = n < a.N ? __half2float(a.scales[n]) : 0.f;
      channel_scale[1] = n + 1 < a.N ? __half2float(a.scales[n + 1]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kMmaMTiles; ++i)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = m0 + wm0 + 16 * i + g + 8 * half;
        if (m >= a.M) continue;
#pragma unroll
        for (int col = 0; col < 2; ++col)
          if (n + col < a.N) a.out[size_t(m) * a.N + n + col] = from_float<T>(acc[i][j][2 * half + col] * channel_scale[col]);
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Plain FMA tiled path (float32 x; unaligned pointers or K).

constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16, kSimtThreads = 256;  // 4 x 4 outputs per thread

// W[n, k] as float32: q * scale is exact (at most 8 + 11 significant bits).
template <int BITS>
__device__ __forceinline__ float dequant_one(const uint8_t* qweight, const __half* scales, int n, int k, int K,
                                             int group_size) {
  const float scale = __half2float(scales[size_t(n) * (K / group_size) + k / group_size]);
  if constexpr (BITS == 8) return float(int8_t(qweight[size_t(n) * K + k])) * scale;
  const uint8_t byte = qweight[size_t(n) * (K / 2) + k / 2];
  return float(int(k % 2 ? byte >> 4 : byte & 0xF) - 8) * scale;
}

template <typename T, int BITS>
__global__ void __launch_bounds__(kSimtThreads) quant_simt_kernel(const TiledArgs<T> a, int n_blocks) {
  __shared__ __align__(16) float xs[kSimtBK][kSimtBM + 4];  // transposed: 4 consecutive m are a float4
  __shared__ __align__(16) float ws[kSimtBK][kSimtBN + 4];
  static_assert(kSimtBM == kSimtBN, "one loop fills both tiles");
  const int m0 = blockIdx.x / n_blocks * kSimtBM, n0 = blockIdx.x % n_blocks * kSimtBN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < a.K; k0 += kSimtBK) {
    for (int i = threadIdx.x; i < kSimtBM * kSimtBK; i += kSimtThreads) {
      const int row = i / kSimtBK, kk = i % kSimtBK, k = k0 + kk;
      const int m = m0 + row, n = n0 + row;
      xs[kk][row] = m < a.M && k < a.K ? to_float(a.x[size_t(m) * a.K + k]) : 0.f;
      ws[kk][row] = n < a.N && k < a.K ? dequant_one<BITS>(a.qweight, a.scales, n, k, a.K, a.group_size) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtBK; ++kk) {
      const float4 xv = *reinterpret_cast<const float4*>(&xs[kk][4 * ty]);
      const float4 wv = *reinterpret_cast<const float4*>(&ws[kk][4 * tx]);
      const float xr[4] = {xv.x, xv.y, xv.z, xv.w}, wr[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xr[i], wr[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + 4 * ty + i, n = n0 + 4 * tx + j;
      if (m < a.M && n < a.N) a.out[size_t(m) * a.N + n] = from_float<T>(acc[i][j]);
    }
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T, int BITS>
cudaError_t run_tiled(const Problem& p, cudaStream_t stream) {
  const TiledArgs<T> args{static_cast<const T*>(p.x), p.qweight, p.scales, static_cast<T*>(p.out), p.M, p.N, p.K,
                          p.group_size};
  if constexpr (!std::is_same_v<T, float>) {
    // 16-byte cp.async of x rows and weight rows.
    const bool aligned = reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && p.K % 8 == 0 &&
                         reinterpret_cast<uintptr_t>(p.qweight) % 16 == 0 && (int64_t(p.K) * BITS / 8) % 16 == 0;
    if (aligned) {
      auto kernel = quant_mma_kernel<T, BITS>;
      constexpr int smem = kMmaStages * mma_stage_bytes<BITS>();
      if (cudaError_t err = allow_smem(kernel, smem); err != cudaSuccess) return err;
      const int64_t n_blocks = ceil_div(p.N, kMmaBN), blocks = n_blocks * ceil_div(p.M, kMmaBM);
      if (blocks > INT_MAX) return cudaErrorInvalidValue;
      kernel<<<unsigned(blocks), kMmaThreads, smem, stream>>>(args, int(n_blocks));
      return cudaGetLastError();
    }
  }
  const int64_t n_blocks = ceil_div(p.N, kSimtBN), blocks = n_blocks * ceil_div(p.M, kSimtBM);
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  quant_simt_kernel<T, BITS><<<unsigned(blocks), kSimtThreads, 0, stream>>>(args, int(n_blocks));
  return cudaGetLastError();
}

}  // namespace

cudaError_t tiled(const Problem& p, DType dtype, cudaStream_t stream) {
  return dispatch(dtype, p.bits, [&](auto tag, auto bits) {
    return run_tiled<typename decltype(tag)::type, decltype(bits)::value>(p, stream);
  });
}

}  // namespace mini_llm::quant_detail
