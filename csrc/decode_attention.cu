// Flash-decoding: attention of a few new queries per sequence (Tq = 1 for plain generation,
// up to ~16 for speculative decoding) against a KV cache whose filled length differs per sequence.
// Launchers in decode_attention.h; the op's reference is decode_attention in
// mini_llm/ops/reference.py. Tests: `pytest tests/test_cuda_decode_attention.py` (needs a GPU);
// standalone check + timing: csrc/standalone/decode_attention.cu.
//
// Why this shape: one query row against T cached keys does 2 * T * hs multiply-adds while reading
// 2 * T * hs elements, so decoding is bound by memory bandwidth, and one sequence has far too
// few rows to fill a GPU if a block owned a whole sequence. So:
//
// 1. decode_split_kernel: grid (B * nkv, num_splits, row blocks). A block owns one kv head of one
//    sequence, one slice of its positions (keys_per_split) and up to kRows = 16 query rows: every
//    query head of the kv group times every new position, so GQA reads each K/V element once for
//    the whole group. Its 4 warps each stream their own tiles of the slice (warp w takes tiles
//    w, w + 4, ...; a tile is 2 KiB of K and 2 KiB of V) through a 3-stage cp.async pipeline
//    (16-byte copies, coalesced), so the warps never wait for each other until the end. Per tile
//    a warp updates its online softmax (float32, base 2: scores are scaled by scale * log2 e) and
//    its output accumulator, with one of two kinds of per-warp math:
//      MmaWarp (bf16, fp16): tensor cores. S = Q K^T by mma.sync m16n8k16 (the block's 16 rows
//        are one m16 tile; Q fragments stay in registers), P V by m16n8k8 with P taken straight
//        from the S accumulators (rounded to the input dtype, as FlashAttention does), K and V
//        fragments by ldmatrix (.trans for V). About 140 instructions per 8-key tile whatever
//        the number of rows, so the kernel stays memory bound for every GQA group with
//        group * Tq <= 16 (more rows take more row blocks, which re-read K/V, mostly from L2).
//      FmaWarp (float32, exact float32 math): CUDA cores. Lane (key kk, slot) takes full dot
//        products of its key with the rows of its slot, q read from shared memory; p and the
//        rescale factors go through shared memory to the P V phase, where a lane owns hs / 32
//        dims of every row. About 10 instructions per (key, row): compute bound past ~8 rows.
//    At the end the 4 warps' (max, sum, o) are merged in shared memory. With one split the
//    block writes the output; otherwise the split's normalised output and its log-sum-exp
//    (base 2) go to a float32 workspace. Blocks whose slice starts past the sequence's length
//    exit at once, so short sequences in a batch cost (almost) nothing.
// 2. decode_combine_kernel (only when num_splits > 1): one warp per query row merges the splits
//    that hold keys of that sequence, weighting each by exp2(lse_s - max lse).
#include "decode_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attention_common.cuh"

namespace mini_llm {
namespace {

using attention_detail::a_fragment_address;
using attention_detail::cp_async_16;
using attention_detail::cp_async_commit;
using attention_detail::cp_async_wait;
using attention_detail::fast_exp2;
using attention_detail::kLog2e;
using attention_detail::ldmatrix_x4;
using attention_detail::ldmatrix_x4_trans;
using attention_detail::Mma;
using attention_detail::quad_max;
using attention_detail::quad_sum;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16;      // query rows (heads of one kv group x new positions) per block
constexpr int kStages = 3;     // K/V tiles each warp keeps in flight
constexpr int kTileBytes = 2048;  // of K (and of V) per warp tile
constexpr int kMaxGridYZ = 65535;
// The automatic plan aims at this many resident blocks per SM (a block takes 56-60 KiB of shared
// memory: 3 fit on an H100, 2 on an A100) and gives each split at least kMinKeysPerSplit keys, so
// a split's pipeline gets going before it ends.
constexpr int kBlocksPerSm = 2;
constexpr int kMinKeysPerSplit = 256;

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <int kBytes>
struct Raw;  // an aligned block of kBytes, loaded in one instruction
template <>
struct Raw<8> { using type = uint2; };
template <>
struct Raw<16> { using type = uint4; };

// N consecutive floats at p (aligned to 4 * N bytes), one vector load.
template <int N>
__device__ __forceinline__ void load_floats(const float* p, float (&out)[N]) {
  using R = typename Raw<4 * N>::type;
  const R raw = *reinterpret_cast<const R*>(p);
  const float* e = reinterpret_cast<const float*>(&raw);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = e[i];
}

// d += a b for one m16n8k8 tile: a = 16 x 8 (row g: a[0], row g + 8: a[1]; columns 2t, 2t + 1),
// b = 8 x 8 (rows 2t, 2t + 1 of column g), d as the m16n8k16 accumulator (attention_common.cuh).
template <typename T>
__device__ __forceinline__ void mma_k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
  else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
}

// Per-warp math, tensor cores (bf16 / fp16). The block's 16 query rows are one m16 tile; lane
// 4g + t holds rows g and g + 8 of every accumulator (h = 0, 1 below), columns 2t and 2t + 1.
template <typename T, int HS>
struct MmaWarp {
  static_assert(kRows == 16, "one m16 tile of rows");
  static constexpr int kKeys = kTileBytes / (HS * 2);  // per tile: 8 (hs 128) or 16 (hs 64)
  static constexpr int kLd = HS + 8;  // shared row stride (elements): +16 bytes, ldmatrix conflict free
  static constexpr int kQBytes = kRows * kLd * 2;  // q rows as T, padding rows zero
  static constexpr int kScratchBytes = 0;
  static constexpr int kKeyTiles = kKeys / 8, kKSteps = HS / 16, kDimTiles = HS / 8;

  uint32_t q_frag[kKSteps][4];  // A fragments of Q, one per 16 head dims
  float o[kDimTiles][4];        // O accumulator, 8 head dims per tile
  float row_max[2], row_sum[2];  // row_sum: this lane's keys only until finish()
  int limit[2];                  // row g + 8h sees keys < limit[h]
  float scale_log2;
  int lane, n_rows;

  // Every thread of the block: q rows (contiguous in global memory) -> shared, padding rows zero.
  __device__ static void stage_q(unsigned char* q_smem, const T* q, int n_rows, float /*scale_log2*/) {
    T* q_s = reinterpret_cast<T*>(q_smem);
    for (int e = threadIdx.x; e < kRows * HS; e += kThreads)
      q_s[(e / HS) * kLd + e % HS] = e / HS < n_rows ? q[e] : from_float<T>(0.f);
  }

  template <typename VisibleEnd>
  __device__ MmaWarp(const unsigned char* q_smem, unsigned char* /*scratch*/, int /*warp*/, int lane_, int n_rows_,
                     float scale_log2_, const VisibleEnd& visible_end)
      : scale_log2(scale_log2_), lane(lane_), n_rows(n_rows_) {
    const T* q_s = reinterpret_cast<const T*>(q_smem);
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) ldmatrix_x4(q_frag[ks], a_fragment_address(q_s, kLd, 0, ks * 16, lane));
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[h] = -INFINITY;
      row_sum[h] = 0.f;
      limit[h] = visible_end(lane / 4 + 8 * h);
    }
  }

  // One tile: keys key0 .. key0 + kKeys - 1, rows [kKeys][kLd] of K and of V in shared memory.
  __device__ void tile(const T* k_tile, const T* v_tile, int key0) {
    const int t = lane % 4;
    // S = Q K^T: ldmatrix.x4 on 8 keys x 32 dims gives the B fragments of two k-steps.
    float s[kKeyTiles][4] = {};
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
      for (int ks = 0; ks < kKSteps; ks += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, k_tile + (8 * j + (lane & 7)) * kLd + ks * 16 + (lane >> 3) * 8);
        Mma<T>::run(s[j], q_frag[ks], b[0], b[1]);
        Mma<T>::run(s[j], q_frag[ks + 1], b[2], b[3]);
      }
    }
    // Scale, mask (causal, end of slice, padding rows), online softmax per row.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + 8 * j + 2 * t + (e & 1);
        s[j][e] = key < limit[e / 2] ? s[j][e] * scale_log2 : -INFINITY;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j][e]);
      }
    }
    float base[2], alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float new_max = fmaxf(row_max[h], quad_max(tile_max[h]));
      // Until a row has seen a key its max is -inf: subtract 0 instead, so p = alpha = 0, not NaN.
      base[h] = new_max == -INFINITY ? 0.f : new_max;
      alpha[h] = fast_exp2(row_max[h] - base[h]);
      row_max[h] = new_max;
      row_sum[h] *= alpha[h];
    }
    uint32_t p_frag[kKeyTiles][2];  // P as the A operand of m16n8k8: the S accumulator layout
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        p[e] = fast_exp2(s[j][e] - base[e / 2]);
        row_sum[e / 2] += p[e];
      }
      p_frag[j][0] = Mma<T>::pack(p[0], p[1]);
      p_frag[j][1] = Mma<T>::pack(p[2], p[3]);
    }
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      o[n][0] *= alpha[0], o[n][1] *= alpha[0];
      o[n][2] *= alpha[1], o[n][3] *= alpha[1];
    }
    // O += P V: ldmatrix.x4.trans on 8 keys x 32 dims gives the B fragments of four dim tiles.
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
      for (int n0 = 0; n0 < kDimTiles; n0 += 4) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_tile + (8 * j + (lane & 7)) * kLd + (n0 + (lane >> 3)) * 8);
#pragma unroll
        for (int m = 0; m < 4; ++m) mma_k8<T>(o[n0 + m], p_frag[j], b[m]);
      }
    }
  }

  // After the block's barrier: this warp's (max, sum) per row and its unnormalised o rows.
  __device__ void finish(float* max_s, float* sum_s, float* o_s) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sum = quad_sum(row_sum[h]);
      const int r = g + 8 * h;
      if (r >= n_rows) continue;
      if (t == 0) max_s[r] = row_max[h], sum_s[r] = sum;
#pragma unroll
      for (int n = 0; n < kDimTiles; ++n)
        *reinterpret_cast<float2*>(o_s + r * HS + n * 8 + 2 * t) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
    }
  }
};

// Per-warp math, CUDA cores (float32). Score phase: lane = slot * kKeys + kk takes key kk of the
// tile for rows slot, slot + kSlots, ...; P V phase: lane owns head dims lane * kDims .. of every row.
template <int HS>
struct FmaWarp {
  static constexpr int kKeys = kTileBytes / (HS * 4);  // per tile: 4 (hs 128) or 8 (hs 64)
  static constexpr int kVec = 4;                        // floats per 16-byte chunk
  static constexpr int kChunks = HS / kVec;
  static constexpr int kSlots = 32 / kKeys;
  static constexpr int kRowsPerLane = kRows / kSlots;
  static constexpr int kDims = HS / 32;
  // Rows padded by 16 bytes: the 8 lanes of a 16-byte load phase read 8 different rows at the
  // same column, and the padding puts them in 8 different 16-byte bank groups.
  static constexpr int kLd = HS + kVec;
  static constexpr int kQLd = HS + 4;
  static constexpr int kQBytes = kRows * kQLd * 4;                      // q, scaled
  static constexpr int kScratchBytes = kWarps * kRows * (kKeys + 1) * 4;  // p, then alpha, per warp
  static_assert(kKeys >= 4 && kRows % kSlots == 0, "float4 reads of p; rows split evenly over the slots");

  float row_max[kRowsPerLane], row_sum[kRowsPerLane];  // row_sum: this lane's keys only until finish()
  int limit[kRowsPerLane];                              // row slot + j * kSlots sees keys < limit[j]
  float o[kRows][kDims];
  const float* q_s;
  float* p_s;      // [kRows][kKeys], this warp's
  float* alpha_s;  // [kRows]
  int lane, n_rows;

  __device__ static void stage_q(unsigned char* q_smem, const float* q, int n_rows, float scale_log2) {
    float* q_s = reinterpret_cast<float*>(q_smem);
    for (int e = threadIdx.x; e < n_rows * HS; e += kThreads) q_s[(e / HS) * kQLd + e % HS] = q[e] * scale_log2;
  }

  template <typename VisibleEnd>
  __device__ FmaWarp(const unsigned char* q_smem, unsigned char* scratch, int warp, int lane_, int n_rows_,
                     float /*scale_log2*/, const VisibleEnd& visible_end)
      : q_s(reinterpret_cast<const float*>(q_smem)),
        p_s(reinterpret_cast<float*>(scratch) + warp * kRows * kKeys),
        alpha_s(reinterpret_cast<float*>(scratch) + kWarps * kRows * kKeys + warp * kRows),
        lane(lane_),
        n_rows(n_rows_) {
    const int slot = lane / kKeys;
#pragma unroll
    for (int j = 0; j < kRowsPerLane; ++j) {
      row_max[j] = -INFINITY;
      row_sum[j] = 0.f;
      limit[j] = visible_end(slot + j * kSlots);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int d = 0; d < kDims; ++d) o[r][d] = 0.f;
  }

  __device__ void tile(const float* k_tile, const float* v_tile, int key0) {
    const int kk = lane % kKeys, slot = lane / kKeys;
    float s[kRowsPerLane] = {};
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const float4 k4 = *reinterpret_cast<const float4*>(k_tile + kk * kLd + c * kVec);
#pragma unroll
      for (int j = 0; j < kRowsPerLane; ++j) {
        const int r = slot + j * kSlots;
        if (r >= n_rows) continue;
        const float4 q4 = *reinterpret_cast<const float4*>(q_s + r * kQLd + c * kVec);
        s[j] = fmaf(q4.x, k4.x, s[j]);
        s[j] = fmaf(q4.y, k4.y, s[j]);
        s[j] = fmaf(q4.z, k4.z, s[j]);
        s[j] = fmaf(q4.w, k4.w, s[j]);
      }
    }
    const int key = key0 + kk;
#pragma unroll
    for (int j = 0; j < kRowsPerLane; ++j) {
      const float score = key < limit[j] ? s[j] : -INFINITY;
      float tile_max = score;
#pragma unroll
      for (int offset = kKeys / 2; offset > 0; offset /= 2)
        tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, offset));
      const float new_max = fmaxf(row_max[j], tile_max);
      const float base = new_max == -INFINITY ? 0.f : new_max;  // as in MmaWarp
      const float p = fast_exp2(score - base);
      const float alpha = fast_exp2(row_max[j] - base);
      row_sum[j] = row_sum[j] * alpha + p;
      row_max[j] = new_max;
      const int r = slot + j * kSlots;
      if (r < n_rows) {
        p_s[r * kKeys + kk] = p;
        if (kk == 0) alpha_s[r] = alpha;
      }
    }
    __syncwarp();
    float v_vals[kKeys][kDims];
#pragma unroll
    for (int key_i = 0; key_i < kKeys; ++key_i) load_floats(v_tile + key_i * kLd + lane * kDims, v_vals[key_i]);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= n_rows) continue;
      float p[kKeys];
#pragma unroll
      for (int k4 = 0; k4 < kKeys / 4; ++k4) {
        const float4 pv = reinterpret_cast<const float4*>(p_s + r * kKeys)[k4];
        p[4 * k4] = pv.x, p[4 * k4 + 1] = pv.y, p[4 * k4 + 2] = pv.z, p[4 * k4 + 3] = pv.w;
      }
      const float alpha = alpha_s[r];
#pragma unroll
      for (int d = 0; d < kDims; ++d) {
        float acc = o[r][d] * alpha;
#pragma unroll
        for (int key_i = 0; key_i < kKeys; ++key_i) acc = fmaf(p[key_i], v_vals[key_i][d], acc);
        o[r][d] = acc;
      }
    }
    __syncwarp();  // p and alpha are free for the next tile
  }

  __device__ void finish(float* max_s, float* sum_s, float* o_s) {
    const int kk = lane % kKeys, slot = lane / kKeys;
#pragma unroll
    for (int j = 0; j < kRowsPerLane; ++j) {
      float sum = row_sum[j];
#pragma unroll
      for (int offset = kKeys / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
      const int r = slot + j * kSlots;
      if (kk == 0 && r < n_rows) max_s[r] = row_max[j], sum_s[r] = sum;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= n_rows) continue;
#pragma unroll
      for (int d = 0; d < kDims; ++d) o_s[r * HS + lane * kDims + d] = o[r][d];
    }
  }
};

template <typename T, int HS>
using WarpMath = std::conditional_t<std::is_same_v<T, float>, FmaWarp<HS>, MmaWarp<T, HS>>;

// Shared memory of decode_split_kernel, in bytes: K/V tiles (reused for the warps' outputs at the
// end), q, the warp math's scratch, per-row statistics (max, sum, merge factor: kWarps x kRows
// each) and the merged lse.
template <typename T, int HS>
struct SmemLayout {
  using Math = WarpMath<T, HS>;
  static constexpr int kTileElems = Math::kKeys * Math::kLd;
  static constexpr int kWarpKvElems = kStages * 2 * kTileElems;  // K and V tiles of every stage
  static constexpr int kQ = kWarps * kWarpKvElems * static_cast<int>(sizeof(T));
  static constexpr int kScratch = kQ + Math::kQBytes;
  static constexpr int kStats = kScratch + Math::kScratchBytes;
  static constexpr int kStatFloats = kWarps * kRows;
  static constexpr int kBytes = kStats + 4 * (3 * kStatFloats + kRows);
  static_assert(Math::kKeys * HS * sizeof(T) == kTileBytes, "a tile is kTileBytes of K");
  static_assert(kTileBytes / 16 % 32 == 0, "every lane copies the same number of 16-byte chunks");
  static_assert(kWarps * kRows * HS * 4 <= kQ, "the warps' outputs fit where the K/V tiles were");
  static_assert(kQ % 16 == 0 && kScratch % 16 == 0 && kStats % 16 == 0, "16-byte aligned regions");
};

template <typename T>
struct SplitArgs {
  const T* q;  // (B, nh, Tq, hs)
  const T* k;  // (B, nkv, Tmax, hs)
  const T* v;
  const int* lens;  // (B,)
  T* out;           // (B, nh, Tq, hs), written when num_splits == 1
  float* o_part;    // (B * nh * Tq, num_splits, hs), written when num_splits > 1
  float* lse_part;  // (B * nh * Tq, num_splits), base-2 log-sum-exp of the split's scores
  int heads, kv_heads, t_q, t_max;
  int rows;  // query rows per kv head: (nh / nkv) * Tq
  int num_splits, keys_per_split;
  float scale_log2;  // scale * log2(e)
};

// 3 blocks per SM: what an H100's shared memory holds (and registers capped to let them fit).
template <typename T, int HS>
__global__ void __launch_bounds__(kThreads, 3) decode_split_kernel(const SplitArgs<T> a) {
  using L = SmemLayout<T, HS>;
  using Math = typename L::Math;
  constexpr int kKeys = Math::kKeys, kLd = Math::kLd;
  const int b = blockIdx.x / a.kv_heads, kv_head = blockIdx.x % a.kv_heads;
  const int split = blockIdx.y, row0 = blockIdx.z * kRows;
  const int len = min(max(a.lens[b], 0), a.t_max);
  const int64_t split_begin64 = static_cast<int64_t>(split) * a.keys_per_split;
  // The whole block leaves when its slice starts past the sequence's end. Split 0 always runs, so
  // every row is written even for a length clamped to 0 (zeros).
  if (split > 0 && split_begin64 >= len) return;
  const int split_begin = static_cast<int>(split_begin64);
  const int split_end = split_begin64 + a.keys_per_split < len ? split_begin + a.keys_per_split : len;
  const int n_rows = min(kRows, a.rows - row0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  extern __shared__ __align__(16) unsigned char smem[];
  float* max_s = reinterpret_cast<float*>(smem + L::kStats);  // [kWarps][kRows]
  float* sum_s = max_s + L::kStatFloats;                      // [kWarps][kRows]
  float* factor_s = sum_s + L::kStatFloats;                   // [kWarps][kRows]
  float* lse_s = factor_s + L::kStatFloats;                   // [kRows]
  float* o_s = reinterpret_cast<float*>(smem);                // [kWarps][kRows][HS], at the end

  // This warp's tiles of the slice: w, w + kWarps, ... (the last one may be partial).
  const int n_tiles = (split_end - split_begin + kKeys - 1) / kKeys;
  const int my_tiles = n_tiles > warp ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
  const auto tile_key0 = [&](int i) { return split_begin + (warp + i * kWarps) * kKeys; };
  const int64_t head_offset = static_cast<int64_t>(blockIdx.x) * a.t_max * HS;  // (b, kv_head, 0, 0)
  const T* k_head = a.k + head_offset;
  const T* v_head = a.v + head_offset;
  T* my_tiles_s = reinterpret_cast<T*>(smem) + warp * L::kWarpKvElems;

  // Tile i of this warp -> stage i % kStages. Keys at or past split_end are zero-filled (never
  // read from memory): their p is 0, and 0 * garbage could be NaN.
  const auto load_tile = [&](int i) {
    constexpr int kChunks = HS * static_cast<int>(sizeof(T)) / 16;  // 16-byte copies per row
    constexpr int kVec = 16 / static_cast<int>(sizeof(T));
    const int key0 = tile_key0(i);
    T* k_dst = my_tiles_s + (i % kStages) * 2 * L::kTileElems;
    T* v_dst = k_dst + L::kTileElems;
#pragma unroll
    for (int c = 0; c < kKeys * kChunks / 32; ++c) {
      const int chunk = c * 32 + lane;
      const int kk = chunk / kChunks, col = (chunk % kChunks) * kVec;
      const bool valid = key0 + kk < split_end;
      const int64_t src = valid ? static_cast<int64_t>(key0 + kk) * HS + col : 0;
      cp_async_16(k_dst + kk * kLd + col, k_head + src, valid);
      cp_async_16(v_dst + kk * kLd + col, v_head + src, valid);
    }
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < my_tiles) load_tile(i);
    cp_async_commit();  // possibly empty: keeps the group count the same in every lane and warp
  }

  // The kv group's query rows are contiguous in q: heads kv_head * group .. + group - 1, each
  // with its Tq positions. Row r (query position len - Tq + r % Tq) sees keys < visible_end(r).
  const int64_t q_row0 =
      (static_cast<int64_t>(b) * a.heads + static_cast<int64_t>(kv_head) * (a.heads / a.kv_heads)) * a.t_q + row0;
  Math::stage_q(smem + L::kQ, a.q + q_row0 * HS, n_rows, a.scale_log2);
  __syncthreads();
  const auto visible_end = [&](int r) {
    return r < n_rows ? min(split_end, len - a.t_q + (row0 + r) % a.t_q + 1) : split_begin;  // padding: none
  };
  Math math(smem + L::kQ, smem + L::kScratch, warp, lane, n_rows, a.scale_log2, visible_end);

  for (int i = 0; i < my_tiles; ++i) {
    if (i + kStages - 1 < my_tiles) load_tile(i + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // this lane's copies of tile i have landed
    __syncwarp();                  // ... and every other lane's
    const T* k_tile = my_tiles_s + (i % kStages) * 2 * L::kTileElems;
    math.tile(k_tile, k_tile + L::kTileElems, tile_key0(i));
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its K/V tiles: o_s may overwrite them

  // Merge the warps: each holds (max, sum, unnormalised o) over its own tiles of the slice.
  math.finish(max_s + warp * kRows, sum_s + warp * kRows, o_s + warp * kRows * HS);
  __syncthreads();
  if (threadIdx.x < n_rows) {
    const int r = threadIdx.x;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, max_s[w * kRows + r]);
    float weight[kWarps], total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      weight[w] = m == -INFINITY ? 0.f : fast_exp2(max_s[w * kRows + r] - m);
      total += sum_s[w * kRows + r] * weight[w];
    }
    // total >= 1 once the row saw a key (its largest score contributes exp2(0)); 0 if it saw none.
#pragma unroll
    for (int w = 0; w < kWarps; ++w) factor_s[w * kRows + r] = total > 0.f ? weight[w] / total : 0.f;
    lse_s[r] = total > 0.f ? m + log2f(total) : -INFINITY;
  }
  __syncthreads();

  for (int e = threadIdx.x; e < n_rows * HS; e += kThreads) {
    const int r = e / HS, d = e % HS;
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) acc = fmaf(o_s[(w * kRows + r) * HS + d], factor_s[w * kRows + r], acc);
    if (a.num_splits == 1)
      a.out[(q_row0 + r) * HS + d] = from_float<T>(acc);
    else
      a.o_part[((q_row0 + r) * a.num_splits + split) * HS + d] = acc;
  }
  if (a.num_splits > 1 && threadIdx.x < n_rows)
    a.lse_part[(q_row0 + threadIdx.x) * a.num_splits + split] = lse_s[threadIdx.x];
}

template <typename T>
struct CombineArgs {
  const float* o_part;
  const float* lse_part;
  const int* lens;
  T* out;
  int64_t rows;       // B * nh * Tq
  int rows_per_seq;   // nh * Tq
  int t_max, num_splits, keys_per_split;
};

// One warp per query row: out = sum_s exp2(lse_s - m) o_s / sum_s exp2(lse_s - m) over the splits
// that start before the sequence's end (the others were never written).
template <typename T, int HS>
__global__ void __launch_bounds__(kThreads) decode_combine_kernel(const CombineArgs<T> a) {
  constexpr int kDims = HS / 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.rows) return;
  const int len = min(max(a.lens[row / a.rows_per_seq], 0), a.t_max);
  const int n_valid = min(a.num_splits, (len + a.keys_per_split - 1) / a.keys_per_split);
  const float* lse = a.lse_part + row * a.num_splits;
  float m = -INFINITY;
  for (int s = lane; s < n_valid; s += 32) m = fmaxf(m, lse[s]);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, offset));

  float acc[kDims] = {}, total = 0.f;
  if (m != -INFINITY) {  // -inf only for lengths out of range: no split saw a key
    const float* o = a.o_part + row * a.num_splits * HS + lane * kDims;
#pragma unroll 4
    for (int s = 0; s < n_valid; ++s) {
      const float weight = fast_exp2(lse[s] - m);
      float part[kDims];
      load_floats(o + static_cast<int64_t>(s) * HS, part);
      total += weight;
#pragma unroll
      for (int d = 0; d < kDims; ++d) acc[d] = fmaf(weight, part[d], acc[d]);
    }
  }
  T* out = a.out + row * HS + lane * kDims;
#pragma unroll
  for (int d = 0; d < kDims; ++d) out[d] = from_float<T>(total > 0.f ? acc[d] / total : 0.f);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool supported(const DecodeAttentionShape& s) {
  if (s.batch < 0 || s.heads <= 0 || s.kv_heads <= 0 || s.heads % s.kv_heads || s.t_q < 0 || s.t_max < s.t_q)
    return false;
  if (s.head_dim != 64 && s.head_dim != 128) return false;
  const int64_t row_chunks = ceil_div(static_cast<int64_t>(s.heads / s.kv_heads) * s.t_q, kRows);
  return static_cast<int64_t>(s.batch) * s.kv_heads <= INT_MAX && row_chunks <= kMaxGridYZ;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}, std::integral_constant<int, HS>{}) for the runtime dtype and head size.
template <typename F>
cudaError_t dispatch(DType dtype, int head_dim, F&& f) {
  const auto with_type = [&](auto tag) {
    if (head_dim == 64) return f(tag, std::integral_constant<int, 64>{});
    if (head_dim == 128) return f(tag, std::integral_constant<int, 128>{});
    return cudaErrorInvalidValue;
  };
  switch (dtype) {
    case DType::f32: return with_type(TypeTag<float>{});
    case DType::f16: return with_type(TypeTag<__half>{});
    case DType::bf16: return with_type(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

template <typename T, int HS>
cudaError_t launch(const T* q, const T* k_cache, const T* v_cache, const int* cache_lens, T* out,
                   float* workspace, const DecodeAttentionShape& shape, const DecodeAttentionPlan& plan,
                   float scale, cudaStream_t stream) {
  constexpr int kSmemBytes = SmemLayout<T, HS>::kBytes;
  const int rows = shape.heads / shape.kv_heads * shape.t_q;
  const int64_t total_rows = static_cast<int64_t>(shape.batch) * shape.heads * shape.t_q;
  const bool split = plan.num_splits > 1;
  float* lse_part = split ? workspace + total_rows * plan.num_splits * HS : nullptr;
  const SplitArgs<T> args{q, k_cache, v_cache, cache_lens, out, workspace, lse_part,
                          shape.heads, shape.kv_heads, shape.t_q, shape.t_max, rows,
                          plan.num_splits, plan.keys_per_split, scale * kLog2e};
  const auto kernel = decode_split_kernel<T, HS>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(shape.batch * shape.kv_heads, plan.num_splits, static_cast<unsigned>(ceil_div(rows, kRows)));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(args);
  err = cudaGetLastError();
  if (err != cudaSuccess || !split) return err;
  const CombineArgs<T> combine{workspace,   lse_part,    cache_lens,      out, total_rows, shape.heads * shape.t_q,
                               shape.t_max, plan.num_splits, plan.keys_per_split};
  decode_combine_kernel<T, HS><<<static_cast<unsigned>(ceil_div(total_rows, kWarps)), kThreads, 0, stream>>>(combine);
  return cudaGetLastError();
}

}  // namespace

cudaError_t decode_attention_plan(DecodeAttentionShape shape, DType dtype, int requested_splits,
                                  DecodeAttentionPlan* plan) {
  if (!supported(shape) || requested_splits < 0 || plan == nullptr) return cudaErrorInvalidValue;
  int block_keys = 0;  // keys one round of the block's 4 warps covers: slices are multiples of it
  const cudaError_t err = dispatch(dtype, shape.head_dim, [&](auto tag, auto hs) {
    block_keys = kWarps * WarpMath<typename decltype(tag)::type, decltype(hs)::value>::kKeys;
    return cudaSuccess;
  });
  if (err != cudaSuccess) return err;
  if (shape.batch == 0 || shape.t_q == 0) {  // nothing to compute
    *plan = {1, block_keys, 0};
    return cudaSuccess;
  }
  int64_t splits = requested_splits;
  if (splits == 0) {
    int device = 0, sms = 0;
    cudaError_t e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e != cudaSuccess) return e;
    const int64_t blocks_per_split =
        static_cast<int64_t>(shape.batch) * shape.kv_heads *
        ceil_div(static_cast<int64_t>(shape.heads / shape.kv_heads) * shape.t_q, kRows);
    splits = std::min(ceil_div(static_cast<int64_t>(kBlocksPerSm) * sms, blocks_per_split),
                      ceil_div(shape.t_max, kMinKeysPerSplit));
  }
  splits = std::clamp<int64_t>(splits, 1, std::min<int64_t>(kMaxGridYZ, ceil_div(shape.t_max, block_keys)));
  const int64_t keys_per_split = ceil_div(ceil_div(shape.t_max, splits), block_keys) * block_keys;
  splits = ceil_div(shape.t_max, keys_per_split);
  const int64_t total_rows = static_cast<int64_t>(shape.batch) * shape.heads * shape.t_q;
  *plan = {static_cast<int>(splits), static_cast<int>(keys_per_split),
           splits > 1 ? total_rows * splits * (shape.head_dim + 1) : 0};
  return cudaSuccess;
}

cudaError_t decode_attention(const void* q, const void* k_cache, const void* v_cache, const int* cache_lens,
                             void* out, float* workspace, DecodeAttentionShape shape,
                             DecodeAttentionPlan plan, float scale, DType dtype, cudaStream_t stream) {
  if (!supported(shape)) return cudaErrorInvalidValue;
  if (shape.batch == 0 || shape.t_q == 0) return cudaSuccess;
  // The plan must cover every position, fit the grid, and come with its workspace.
  if (plan.num_splits < 1 || plan.num_splits > kMaxGridYZ || plan.keys_per_split < 1 ||
      static_cast<int64_t>(plan.num_splits) * plan.keys_per_split < shape.t_max ||
      (plan.num_splits > 1 && workspace == nullptr))
    return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(k_cache) % 16 || reinterpret_cast<uintptr_t>(v_cache) % 16)
    return cudaErrorMisalignedAddress;  // tiles are copied in 16-byte pieces
  return dispatch(dtype, shape.head_dim, [&](auto tag, auto hs) {
    using T = typename decltype(tag)::type;
    return launch<T, decltype(hs)::value>(static_cast<const T*>(q), static_cast<const T*>(k_cache),
                                          static_cast<const T*>(v_cache), cache_lens, static_cast<T*>(out),
                                          workspace, shape, plan, scale, stream);
  });
}

}  // namespace mini_llm
