// Weight-only quantized matmul out (M, N) = x (M, K) @ W.T, W stored as int8 per output channel
// or int4 in groups along K (format: quant_matmul.h, mini_llm/quant.py). The weight is never
// dequantized to memory: each kernel reads the packed bytes and dequantizes in registers.
// Launchers in quant_matmul.h; binding csrc/bindings.cpp; Python wrapper
// mini_llm/ops/cuda/quant_matmul.py; tests tests/test_cuda_quant_matmul.py; standalone check and
// timing csrc/standalone/quant_matmul.cu.
//
// Three kernels:
// - quant_gemv_kernel, M <= 16 (decode; memory bound: the weight is read once, the time is
//   its bytes over DRAM bandwidth). A block owns a slice of output channels and a slice of K
//   (split-K when that fills the GPU better or x would not fit shared memory; partial sums then
//   go to a float32 workspace and sum_splits_kernel adds them in a fixed order). The block
//   stages its slice of x (all M rows) in shared memory as float32 while its first weight loads
//   are in flight; 8 lanes share a row: each streams 16-byte chunks of the packed row with
//   128-bit loads that skip L1 (one row per load instruction is 128 contiguous bytes), 4 chunks
//   (few rows) or 2 rows x 1 chunk (many rows) per iteration plus the next iteration's
//   prefetched, dequantizes them in registers and does fp32 FMAs against x read from shared
//   memory (conflict-free: see x_slot), for all M rows at once; then a 3-step shuffle
//   reduction. Dequantization costs ~2 instructions per weight, using float tricks:
//     int8: byte ^ 0x80 = q + 128 placed in the mantissa of 2^23 (one PRMT): the float is
//           2^23 + q + 128, minus (2^23 + 128) gives q exactly (one FADD).
//     int4: nibble u at bit p of a word, masked and OR'ed into 2^23 (one LOP3), gives
//           2^23 + u * 2^p; minus (2^23 + 8 * 2^p) gives (u - 8) * 2^p exactly. x was stored
//           pre-multiplied by 2^-p, so no shift is needed per nibble. The group scale multiplies
//           the 32-element partial sum of each chunk (a chunk never straddles a group), or,
//           for M > 4, the weights (exact in fp32; saves the partial sums' registers).
//   int8's per-channel scale multiplies the final sum.
// - quant_mma_kernel, M > 16 with float16 / bfloat16 x (prefill): 128 x 128 tiles, BK = 64,
//   a 4-stage cp.async pipeline, 8 warps of 64 x 32, tensor cores (mma.sync m16n8k16, fp32
//   accumulate). Inside a k-tile the 64 k are permuted, identically for x and W (a dot product
//   does not care about the order of its terms): thread t of a quad takes physical k
//   16t .. 16t + 15 for all four k16 steps, so its B fragments are one 16-byte (int8) or 8-byte
//   (int4) shared load and its A fragments two 16-byte loads per row (x rows XOR-swizzled:
//   conflict-free). Weights are dequantized into half2 / bfloat162 registers with the same
//   magic-number trick (int4: q * scale rounded once to x's dtype, as dequantize-then-matmul
//   would; int8: q exactly, the channel scale applied to the fp32 accumulator).
// - quant_simt_kernel, the rest (float32 x, or pointers / K that the 16-byte paths cannot
//   take): 64 x 64 tiles in shared memory, weights dequantized to fp32 (q * scale is exact in
//   fp32), 4 x 4 outputs per thread with plain FMAs. Simple and correct, not fast.
#include "quant_matmul.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mini_llm {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// 16 bytes of a weight row, read once: straight from L2, not kept in L1.
__device__ __forceinline__ uint4 load_streaming(const uint8_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// ---------------------------------------------------------------------------------------------
// GEMV path (M <= 16).

// k values in one 16-byte chunk of a packed row.
__host__ __device__ constexpr int chunk_k(int bits) { return 128 / bits; }

// Per M (rounded up to a power of two): warps per block, output rows per lane, chunks per row in
// flight per lane. Few rows (memory bound): one row per lane and small blocks, so that even
// N = 4096 makes enough blocks without split-K. Many rows (FMA bound): two rows per lane, so each
// x value read from shared memory feeds two rows.
struct GemvShape {
  int warps, rows_per_lane, unroll;
};
__host__ __device__ constexpr GemvShape gemv_shape(int mt) { return mt <= 4 ? GemvShape{4, 1, 4} : GemvShape{8, 2, 1}; }
constexpr int kKLanes = 8;                    // lanes that share one row, 16 bytes each
constexpr int kRowLanes = kWarp / kKLanes;    // rows a warp reads side by side
constexpr int kGemvSmemBudget = 96 * 1024;    // x slice (MT rows x k_split floats)

template <typename T>
struct GemvArgs {
  const T* x;              // (M, K)
  const uint8_t* qweight;  // (N, K * bits / 8)
  const __half* scales;    // (N, K / group_size)
  T* out;                  // (M, N), written when partial is null
  float* partial;          // (splits, M, N) split-K sums, or null
  int M, N, K, group_size, k_split;
  bool vector_loads;       // weight rows 16-byte aligned
};

// Where x[m, k_begin + c * CK + 4j .. + 4] sits in shared memory, in float4 units. The 8 lanes of
// a row read chunks c .. c + 7 at the same j: consecutive slots, no bank conflict.
__device__ __forceinline__ int x_slot(int m, int c, int j, int chunks, int j_per_chunk) {
  return ((m * (chunks / kKLanes) + c / kKLanes) * j_per_chunk + j) * kKLanes + c % kKLanes;
}

// int4: x[k] is stored times 2^-p, p the bit offset its nibble is decoded at (dequant_word).
template <int BITS>
__device__ __forceinline__ float x_prescale(int k_in_chunk) {
  if constexpr (BITS == 8) return 1.f;
  const int i = k_in_chunk & 7;              // nibble of its 32-bit word
  const int p = i < 5 ? 4 * i : 4 * i - 12;  // 0 4 8 12 16 8 12 16
  return __int_as_float((127 - p) << 23);
}

// The KPW weights of one 32-bit word as exact floats (int4: times 2^p, see x_prescale).
template <int BITS>
__device__ __forceinline__ void dequant_word(uint32_t v, float (&w)[32 / BITS]) {
  if constexpr (BITS == 8) {
    const uint32_t u = v ^ 0x80808080u;  // q + 128 per byte
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440 | i)) - 8388736.f;
  } else {
    const uint32_t hi = v >> 12;  // nibbles 5..7 at bits 8, 12, 16
    w[0] = __uint_as_float((v & 0x0000000Fu) | 0x4B000000u) - (8388608.f + 8.f);
    w[1] = __uint_as_float((v & 0x000000F0u) | 0x4B000000u) - (8388608.f + 128.f);
    w[2] = __uint_as_float((v & 0x00000F00u) | 0x4B000000u) - (8388608.f + 2048.f);
    w[3] = __uint_as_float((v & 0x0000F000u) | 0x4B000000u) - (8388608.f + 32768.f);
    w[4] = __uint_as_float((v & 0x000F0000u) | 0x4B000000u) - (8388608.f + 524288.f);
    w[5] = __uint_as_float((hi & 0x00000F00u) | 0x4B000000u) - (8388608.f + 2048.f);
    w[6] = __uint_as_float((hi & 0x0000F000u) | 0x4B000000u) - (8388608.f + 32768.f);
    w[7] = __uint_as_float((hi & 0x000F0000u) | 0x4B000000u) - (8388608.f + 524288.f);
  }
}

// The 16-byte chunk at p, of which `bytes_left` lie inside the row's slice; zeros past them.
__device__ __forceinline__ uint4 load_chunk(const uint8_t* p, int bytes_left, bool vector_loads) {
  if (vector_loads && bytes_left >= 16) return load_streaming(p);
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < 16; ++i)
    if (i < bytes_left) w[i / 4] |= uint32_t(__ldg(p + i)) << (8 * (i % 4));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Few rows: ptxas's own register choice (60-100) leaves room for many resident blocks. Many rows:
// min 1 block per SM lets it take the ~170-200 registers the accumulators need without spilling.
template <typename T, int BITS, int MT>
__global__ void __launch_bounds__(gemv_shape(MT).warps * kWarp, MT >= 8 ? 1 : 0) quant_gemv_kernel(const GemvArgs<T> a) {
  constexpr GemvShape kShape = gemv_shape(MT);
  constexpr int R = kShape.rows_per_lane, U = kShape.unroll, kThreads = kShape.warps * kWarp;
  constexpr int CK = chunk_k(BITS), J = CK / 4, KPW = 32 / BITS;  // k per chunk, float4 per chunk, k per word
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  float4* xs = reinterpret_cast<float4*>(dynamic_smem);  // (MT, chunks / 8, J, 8), see x_slot

  const int chunks = a.k_split / CK;  // a multiple of kKLanes * U
  const int k_begin = blockIdx.y * a.k_split;
  const int k_end = min(a.K, k_begin + a.k_split);

  // Lane (row lane, k lane kl) owns rows n0 .. n0 + R - 1 and, of the block's K slice, the
  // chunks c = c0 + u * kKLanes + kl.
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, kl = lane % kKLanes;
  const int n0 = blockIdx.x * (kShape.warps * kRowLanes * R) + (warp * kRowLanes + lane / kKLanes) * R;
  const size_t row_bytes = size_t(a.K) * BITS / 8;
  const int groups = a.K / a.group_size;

  struct Loaded {
    uint4 w[U][R];
    float scale[U][R];  // int4: the chunk's group scale
  };
  auto load = [&](int c0, Loaded& l) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = k_begin + (c0 + u * kKLanes + kl) * CK;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int n = n0 + r;
        const bool inside = n < a.N && k < k_end;  // false for the prefetch past the last chunk
        l.w[u][r] = inside ? load_chunk(a.qweight + n * row_bytes + size_t(k) * BITS / 8, (k_end - k) * BITS / 8,
                                        a.vector_loads)
                           : make_uint4(0, 0, 0, 0);
        l.scale[u][r] = BITS == 4 && inside ? __half2float(a.scales[size_t(n) * groups + k / a.group_size]) : 0.f;
      }
    }
  };

  // 1. The first chunks of weights go in flight, then this block's slice of x, all MT rows, is
  // staged as float32 (zeros past M and past k_end) while they arrive.
  Loaded cur, next;
  load(0, cur);
  for (int i = threadIdx.x; i < MT * chunks * J; i += kThreads) {
    const int m = i / (chunks * J), c = i / J % chunks, j = i % J;
    const int k = k_begin + c * CK + 4 * j;
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e)
      v[e] = m < a.M && k + e < k_end ? to_float(a.x[size_t(m) * a.K + k + e]) * x_prescale<BITS>(4 * j + e) : 0.f;
    xs[x_slot(m, c, j, chunks, J)] = make_float4(v[0], v[1], v[2], v[3]);
  }
  __syncthreads();

  // 2. Stream the rows.
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

  // int4 group scales: with few rows, each chunk's 32-term partial sum is scaled (one FMA per row
  // and m); with many, the weights themselves (one FMUL per weight, and no partial sums to hold).
  constexpr bool kScaleWeights = BITS == 4 && MT >= 8;

  // sum[r][m] += dot(chunk of row r, x[m] over the chunk's k).
  auto dot_chunk = [&](const Loaded& l, int u, int c, float (&sum)[R][MT]) {
    const float4* xc = xs + x_slot(0, c, 0, chunks, J);
#pragma unroll
    for (int wi = 0; wi < 4; ++wi) {
      float w[R][KPW];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        dequant_word<BITS>(word_of(l.w[u][r], wi), w[r]);
        if constexpr (kScaleWeights)
#pragma unroll
          for (int i = 0; i < KPW; ++i) w[r][i] *= l.scale[u][r];  // exact: 4 x 11 significant bits
      }
#pragma unroll
      for (int h = 0; h < KPW / 4; ++h) {
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float4 xv = xc[(m * (chunks / kKLanes) * J + wi * KPW / 4 + h) * kKLanes];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            sum[r][m] = fmaf(xv.x, w[r][4 * h + 0], sum[r][m]);
            sum[r][m] = fmaf(xv.y, w[r][4 * h + 1], sum[r][m]);
            sum[r][m] = fmaf(xv.z, w[r][4 * h + 2], sum[r][m]);
            sum[r][m] = fmaf(xv.w, w[r][4 * h + 3], sum[r][m]);
          }
        }
      }
    }
  };

  for (int c0 = 0; c0 < chunks; c0 += kKLanes * U) {
    load(c0 + kKLanes * U, next);  // in flight while this iteration computes
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = c0 + u * kKLanes + kl;
      if constexpr (BITS == 8 || kScaleWeights) {
        dot_chunk(cur, u, c, acc);
      } else {
        float part[R][MT];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int m = 0; m < MT; ++m) part[r][m] = 0.f;
        dot_chunk(cur, u, c, part);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[r][m] = fmaf(cur.scale[u][r], part[r][m], acc[r][m]);
      }
    }
    cur = next;
  }

  // 3. Sum over the 8 lanes of each row; lane kl writes the rows m with m % 8 == kl.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = n0 + r;
    const float channel_scale = BITS == 8 && n < a.N ? __half2float(a.scales[n]) : 1.f;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int offset = kKLanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
      if (m % kKLanes == kl && m < a.M && n < a.N) {
        v *= channel_scale;
        if (a.partial != nullptr)
          a.partial[(size_t(blockIdx.y) * a.M + m) * a.N + n] = v;
        else
          a.out[size_t(m) * a.N + n] = from_float<T>(v);
      }
    }
  }
}

// out[i] = sum over splits of partial[s][i], in split order (deterministic).
template <typename T>
__global__ void sum_splits_kernel(const float* __restrict__ partial, T* __restrict__ out, int64_t count, int splits) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int p = 0; p < splits; ++p) s += partial[p * count + i];
    out[i] = from_float<T>(s);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path (M > 16, float16 / bfloat16 x).

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

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool inside) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(inside ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __half>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
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
          for (int j = 0; j < kMmaNTiles; ++j) mma_16816<T>(acc[i][j], frag, b[j]);
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
// Host side: plans and dispatch.

struct Problem {
  const void* x;
  const uint8_t* qweight;
  const __half* scales;
  void* out;
  float* workspace;
  size_t workspace_bytes;
  int M, N, K, bits, group_size;
};

int gemv_padded_rows(int rows) { return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : rows <= 8 ? 8 : 16; }

// How the GEMV kernel cuts a (rows <= 16, N, K) problem.
struct GemvPlan {
  int64_t k_split, splits, smem_bytes, rows_per_block;
  size_t workspace_bytes(int64_t rows, int64_t N) const { return splits > 1 ? size_t(splits * rows * N) * 4 : 0; }
};

GemvPlan plan_gemv(int mt, int64_t N, int64_t K, int bits, int sms) {
  const GemvShape shape = gemv_shape(mt);
  const int64_t span = int64_t(kKLanes) * shape.unroll * chunk_k(bits);  // k one block iteration covers
  const int64_t smem_split = std::max(span, kGemvSmemBudget / (4 * mt) / span * span);
  const int64_t rows_per_block = int64_t(shape.warps) * kRowLanes * shape.rows_per_lane;
  const int64_t n_blocks = ceil_div(N, rows_per_block);
  // Memory bound (few rows): all blocks are resident at once, one per SM is enough. FMA bound:
  // two blocks' worth per SM, so the last wave is not half empty.
  const int64_t want_blocks = mt <= 4 ? sms : 2 * int64_t(sms);
  int64_t splits = std::max(ceil_div(K, smem_split), std::min(ceil_div(want_blocks, n_blocks), ceil_div(K, span)));
  const int64_t k_split = ceil_div(ceil_div(K, splits), span) * span;
  splits = ceil_div(K, k_split);
  return {k_split, splits, mt * k_split * 4, rows_per_block};
}

cudaError_t sm_count(int* sms) {
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

// Kernels that take more than 48 KiB of dynamic shared memory must opt in.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, int64_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

template <typename T, int BITS, int MT>
cudaError_t launch_gemv(const Problem& p, const T* x, T* out, int rows, int sms, cudaStream_t stream) {
  const GemvPlan plan = plan_gemv(MT, p.N, p.K, BITS, sms);
  if (plan.splits > 65535) return cudaErrorInvalidValue;
  float* partial = nullptr;
  if (plan.splits > 1) {
    if (p.workspace == nullptr || p.workspace_bytes < plan.workspace_bytes(rows, p.N)) return cudaErrorInvalidValue;
    partial = p.workspace;
  }
  auto kernel = quant_gemv_kernel<T, BITS, MT>;
  if (cudaError_t err = allow_smem(kernel, plan.smem_bytes); err != cudaSuccess) return err;
  const bool vector_loads = reinterpret_cast<uintptr_t>(p.qweight) % 16 == 0 && (int64_t(p.K) * BITS / 8) % 16 == 0;
  const GemvArgs<T> args{x, p.qweight, p.scales, out, partial, rows, p.N, p.K, p.group_size, int(plan.k_split),
                         vector_loads};
  const dim3 grid(unsigned(ceil_div(p.N, plan.rows_per_block)), unsigned(plan.splits));
  kernel<<<grid, gemv_shape(MT).warps * kWarp, plan.smem_bytes, stream>>>(args);
  if (partial != nullptr) {
    const int64_t count = int64_t(rows) * p.N;
    const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(count, 256), 4 * int64_t(sms)));
    sum_splits_kernel<T><<<blocks, 256, 0, stream>>>(partial, out, count, int(plan.splits));
  }
  return cudaGetLastError();
}

template <typename T, int BITS>
cudaError_t run_gemv(const Problem& p, cudaStream_t stream) {
  int sms = 0;
  if (cudaError_t err = sm_count(&sms); err != cudaSuccess) return err;
  for (int m0 = 0; m0 < p.M; m0 += kQuantGemvMaxRows) {
    const int rows = std::min(kQuantGemvMaxRows, p.M - m0);
    const T* x = static_cast<const T*>(p.x) + size_t(m0) * p.K;
    T* out = static_cast<T*>(p.out) + size_t(m0) * p.N;
    cudaError_t err = cudaErrorInvalidValue;
    switch (gemv_padded_rows(rows)) {
      case 1: err = launch_gemv<T, BITS, 1>(p, x, out, rows, sms, stream); break;
      case 2: err = launch_gemv<T, BITS, 2>(p, x, out, rows, sms, stream); break;
      case 4: err = launch_gemv<T, BITS, 4>(p, x, out, rows, sms, stream); break;
      case 8: err = launch_gemv<T, BITS, 8>(p, x, out, rows, sms, stream); break;
      case 16: err = launch_gemv<T, BITS, 16>(p, x, out, rows, sms, stream); break;
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

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

bool use_gemv(int64_t M, QuantMatmulPath path) {
  return path == QuantMatmulPath::gemv || (path == QuantMatmulPath::automatic && M <= kQuantGemvMaxRows);
}

bool bad_problem(int64_t M, int64_t N, int64_t K, int bits, int group_size) {
  if (M < 0 || N < 0 || K < 1 || M > INT_MAX || N > INT_MAX || K > INT_MAX / 2) return true;
  if (bits == 8) return group_size != K;
  return bits != 4 || (group_size != 32 && group_size != 64 && group_size != 128) || K % group_size != 0;
}

template <typename T>
cudaError_t run(const Problem& p, QuantMatmulPath path, cudaStream_t stream) {
  const bool gemv = use_gemv(p.M, path);
  if (p.bits == 8) return gemv ? run_gemv<T, 8>(p, stream) : run_tiled<T, 8>(p, stream);
  return gemv ? run_gemv<T, 4>(p, stream) : run_tiled<T, 4>(p, stream);
}

}  // namespace

cudaError_t quant_matmul_workspace_bytes(int64_t M, int64_t N, int64_t K, int bits, int group_size,
                                         QuantMatmulPath path, size_t* bytes) {
  *bytes = 0;
  if (bad_problem(M, N, K, bits, group_size)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0 || !use_gemv(M, path)) return cudaSuccess;
  int sms = 0;
  if (cudaError_t err = sm_count(&sms); err != cudaSuccess) return err;
  // The GEMV walks M in slices of kQuantGemvMaxRows rows, one workspace reused by each.
  for (int64_t rows : {std::min<int64_t>(M, kQuantGemvMaxRows), M % kQuantGemvMaxRows}) {
    if (rows > 0) *bytes = std::max(*bytes, plan_gemv(gemv_padded_rows(int(rows)), N, K, bits, sms).workspace_bytes(rows, N));
  }
  return cudaSuccess;
}

cudaError_t quant_matmul(const void* x, const void* qweight, const void* scales, void* out, void* workspace,
                         size_t workspace_bytes, int64_t M, int64_t N, int64_t K, int bits, int group_size,
                         DType dtype, QuantMatmulPath path, cudaStream_t stream) {
  if (bad_problem(M, N, K, bits, group_size)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const Problem p{x, static_cast<const uint8_t*>(qweight), static_cast<const __half*>(scales), out,
                  static_cast<float*>(workspace), workspace_bytes, int(M), int(N), int(K), bits, group_size};
  switch (dtype) {
    case DType::f32: return run<float>(p, path, stream);
    case DType::f16: return run<__half>(p, path, stream);
    case DType::bf16: return run<__nv_bfloat16>(p, path, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mini_llm
