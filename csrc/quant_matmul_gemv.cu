// Weight-only quantized matmul, the GEMV path (M <= 16 rows of x: decode). Called by
// quant_matmul (quant_matmul.cu) through quant_detail::gemv; the weight format and the whole op
// are described there and in quant_matmul.h. Tests tests/test_cuda_quant_matmul.py; standalone
// check and timing csrc/standalone/quant_matmul.cu.
//
// quant_gemv_kernel is memory bound: the weight is read once, the time is its bytes over DRAM
// bandwidth. A block owns a slice of output channels and a slice of K (split-K when that fills
// the GPU better or x would not fit shared memory; partial sums then go to a float32 workspace
// and sum_splits_kernel adds them in a fixed order). The block stages its slice of x (all M
// rows) in shared memory as float32 while its first weight loads are in flight; 8 lanes share a
// row: each streams 16-byte chunks of the packed row with 128-bit loads that skip L1 (one row per
// load instruction is 128 contiguous bytes), 4 chunks (few rows) or 2 rows x 1 chunk (many rows)
// per iteration plus the next iteration's prefetched, dequantizes them in registers and does fp32
// FMAs against x read from shared memory (conflict-free: see x_slot), for all M rows at once;
// then a 3-step shuffle reduction. Dequantization costs ~2 instructions per weight, using float
// tricks:
//   int8: byte ^ 0x80 = q + 128 placed in the mantissa of 2^23 (one PRMT): the float is
//         2^23 + q + 128, minus (2^23 + 128) gives q exactly (one FADD).
//   int4: nibble u at bit p of a word, masked and OR'ed into 2^23 (one LOP3), gives
//         2^23 + u * 2^p; minus (2^23 + 8 * 2^p) gives (u - 8) * 2^p exactly. x was stored
//         pre-multiplied by 2^-p, so no shift is needed per nibble. The group scale multiplies
//         the 32-element partial sum of each chunk (a chunk never straddles a group), or,
//         for M > 4, the weights (exact in fp32; saves the partial sums' registers).
// int8's per-channel scale multiplies the final sum.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device_common.cuh"
#include "quant_matmul_common.cuh"

namespace mini_llm::quant_detail {
namespace {

using namespace device;

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
      float v = warp_sum<kKLanes>(acc[r][m]);
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
// Host side: plan and launch.

int gemv_padded_rows(int rows) { return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : rows <= 8 ? 8 : 16; }

cudaError_t sm_count(int* sms) {
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

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

}  // namespace

cudaError_t gemv(const Problem& p, DType dtype, cudaStream_t stream) {
  return dispatch(dtype, p.bits, [&](auto tag, auto bits) {
    return run_gemv<typename decltype(tag)::type, decltype(bits)::value>(p, stream);
  });
}

cudaError_t gemv_workspace_bytes(int64_t M, int64_t N, int64_t K, int bits, size_t* bytes) {
  int sms = 0;
  if (cudaError_t err = sm_count(&sms); err != cudaSuccess) return err;
  // The GEMV walks M in slices of kQuantGemvMaxRows rows, one workspace reused by each.
  for (int64_t rows : {std::min<int64_t>(M, kQuantGemvMaxRows), M % kQuantGemvMaxRows}) {
    if (rows > 0) *bytes = std::max(*bytes, plan_gemv(gemv_padded_rows(int(rows)), N, K, bits, sms).workspace_bytes(rows, N));
  }
  return cudaSuccess;
}

}  // namespace mini_llm::quant_detail
