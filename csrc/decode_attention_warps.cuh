// The per-warp math of flash-decoding's decode_split_kernel (decode_attention.cu, which describes
// the whole op): one warp's share of a block's work on one K/V tile, two versions behind one
// interface, picked by WarpMath<T, HS>:
// - MmaWarp (bf16, fp16): tensor cores. S = Q K^T by mma.sync m16n8k16 (the block's 16 rows
//   are one m16 tile; Q fragments stay in registers), P V by m16n8k8 with P taken straight
//   from the S accumulators (rounded to the input dtype, as FlashAttention does), K and V
//   fragments by ldmatrix (.trans for V). About 140 instructions per 8-key tile whatever
//   the number of rows, so the kernel stays memory bound for every GQA group with
//   group * Tq <= 16 (more rows take more row blocks, which re-read K/V, mostly from L2).
// - FmaWarp (float32, exact float32 math): CUDA cores. Lane (key kk, slot) takes full dot
//   products of its key with the rows of its slot, q read from shared memory; p and the
//   rescale factors go through shared memory to the P V phase, where a lane owns hs / 32
//   dims of every row. About 10 instructions per (key, row): compute bound past ~8 rows.
//
// The interface decode_split_kernel uses (rows of a block: kRows; keys per tile: kKeys):
//   kKeys, kLd (shared row stride of a K / V tile, elements), kQBytes (staged q), kScratchBytes;
//   stage_q (every thread: q rows -> shared), the constructor (this warp's state, from the staged
//   q), tile(k_tile, v_tile, key0) (one tile: scores, online softmax, O), and finish(max, sum, o)
//   (this warp's statistics and unnormalised output rows, for the merge across warps).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "device_common.cuh"

namespace mini_llm::decode_detail {

using namespace device;

constexpr int kWarps = 4;         // per block, each streaming its own tiles
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16;         // query rows (heads of one kv group x new positions) per block
constexpr int kTileBytes = 2048;  // of K (and of V) per warp tile

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
        for (int m = 0; m < 4; ++m) Mma<T>::run_k8(o[n0 + m], p_frag[j], b[m]);
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
      const float tile_max = warp_max<kKeys>(score);
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
      const float sum = warp_sum<kKeys>(row_sum[j]);
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

}  // namespace mini_llm::decode_detail
