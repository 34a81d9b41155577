// FlashAttention-2 backward on tensor cores (bf16 / fp16 inputs, float32 accumulation); float32
// inputs go to attention_fp32.cu. Launcher: attention_backward (attention.h). Tested by
// tests/test_cuda_attention.py.
//
// With P = softmax(scale * Q K^T) recomputed from the forward's lse (P = exp(scale * q.k - lse)):
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta) with delta_i = sum_j P_ij dP_ij = dO_i . O_i,
//   dQ = scale * dS K,  dK = scale * dS^T Q.
// Three kernels, none with atomics:
//   attention_bwd_delta_kernel: delta = rowsum(dO * O), one warp per query row (any dtype).
//   flash_attention_bwd_dq_kernel: shaped like the forward: 8 warps x 16 query rows per block,
//     K and V tiles of 64 keys streamed through shared memory (cp.async, two stages). Per tile a
//     warp computes S = Q K^T and dP = dO V^T, turns them into dS in registers, and adds dS K.
//   flash_attention_bwd_dkdv_kernel: roles swapped: 8 warps x 16 keys per block, K and V rows
//     resident in shared memory, tiles of queries (Q, dO, lse, delta) streamed. Per tile a warp
//     computes S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T, dS^T, dK += dS^T Q. Working on the
//     transposes keeps every product's A operand in the accumulator layout, in registers.
// Recomputing S and dP in both kernels costs 7 matmuls instead of FlashAttention-2's 5, but dQ
// needs no float32 atomics, no extra buffer and no conversion pass. Causal: as in the forward,
// tiles with no visible (key, query) pair are never loaded or skipped per warp.
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "attention.h"
#include "attention_common.cuh"

namespace mini_llm {
namespace {

using namespace attention_detail;

constexpr int kRowsPerBlock = kWarps * 16;  // query rows (dq kernel) or key rows (dk/dv kernel)
constexpr int kKeyTile = 64;                // keys per tile in the dq kernel

// Queries per tile in the dk/dv kernel. Each warp keeps dK and dV (2 x 16 x hs floats) in
// registers throughout, so at hs 128 a narrower tile keeps S^T and dP^T within budget.
template <int kHeadDim>
constexpr int kQueryTileFor = kHeadDim == 128 ? 32 : 64;

template <int kHeadDim>
constexpr int dq_smem_bytes() {  // Q and dO rows + two stages of K and V tiles
  return (2 * kRowsPerBlock + 4 * kKeyTile) * (kHeadDim + kPad) * 2;
}

template <int kHeadDim>
constexpr int dkdv_smem_bytes() {  // K and V rows + two stages of Q, dO tiles and lse, delta
  return (2 * kRowsPerBlock + 4 * kQueryTileFor<kHeadDim>) * (kHeadDim + kPad) * 2 +
         4 * kQueryTileFor<kHeadDim> * static_cast<int>(sizeof(float));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_delta_kernel(BwdParams<T> p, int head_dim) {
  const int row = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int head = blockIdx.y, batch = blockIdx.z;
  if (row >= p.t_q) return;  // whole warps leave together
  const T* o = p.o + batch * p.os.batch + head * p.os.head + row * p.os.seq;
  const T* dout = p.dout + batch * p.dos.batch + head * p.dos.head + row * p.dos.seq;
  float acc = 0.f;
  for (int d = lane; d < head_dim; d += 32) acc = fmaf(static_cast<float>(o[d]), static_cast<float>(dout[d]), acc);
  acc = warp_sum(acc);
  if (lane == 0) p.delta[(static_cast<int64_t>(batch) * p.heads + head) * p.t_q + row] = acc;
}

template <typename T, int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kThreads, 1) flash_attention_bwd_dq_kernel(BwdParams<T> p) {
  constexpr int kLd = kHeadDim + kPad;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);        // (kRowsPerBlock, kLd); dQ staging at the end
  T* do_tile = q_tile + kRowsPerBlock * kLd;     // (kRowsPerBlock, kLd)
  T* k_tiles = do_tile + kRowsPerBlock * kLd;    // 2 stages of (kKeyTile, kLd)
  T* v_tiles = k_tiles + 2 * kKeyTile * kLd;     // 2 stages of (kKeyTile, kLd)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kRowsPerBlock;  // causal: longest rows first
  const int head = blockIdx.y, batch = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(batch) * p.heads + head;
  const T* k = p.k + batch * p.ks.batch + head * p.ks.head;
  const T* v = p.v + batch * p.vs.batch + head * p.vs.head;
  const int diag = p.t_k - p.t_q;  // query i sits at key position i + diag
  const int key_end = kCausal ? min(p.t_k, m0 + kRowsPerBlock + diag) : p.t_k;
  const int n_tiles = (key_end + kKeyTile - 1) / kKeyTile;

  load_tile_async<kRowsPerBlock, kHeadDim, kThreads>(q_tile, p.q + batch * p.qs.batch + head * p.qs.head,
                                                     p.qs.seq, m0, p.t_q);
  load_tile_async<kRowsPerBlock, kHeadDim, kThreads>(do_tile, p.dout + batch * p.dos.batch + head * p.dos.head,
                                                     p.dos.seq, m0, p.t_q);
  load_tile_async<kKeyTile, kHeadDim, kThreads>(k_tiles, k, p.ks.seq, 0, p.t_k);
  load_tile_async<kKeyTile, kHeadDim, kThreads>(v_tiles, v, p.vs.seq, 0, p.t_k);
  cp_async_commit();

  const int row0 = m0 + warp * 16;  // this warp's first query row
  T* q_rows = q_tile + warp * 16 * kLd;
  const T* do_rows = do_tile + warp * 16 * kLd;
  float lse2[2], delta[2];  // accumulator rows g, g + 8: lse in log2 units, rowsum(dO * O)
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + g + 8 * r;
    lse2[r] = row < p.t_q ? p.lse[bh * p.t_q + row] * kLog2e : 0.f;
    delta[r] = row < p.t_q ? p.delta[bh * p.t_q + row] : 0.f;
  }
  float dq[kHeadDim / 8][4] = {};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      load_tile_async<kKeyTile, kHeadDim, kThreads>(k_tiles + (stage ^ 1) * kKeyTile * kLd, k, p.ks.seq,
                                                    (j + 1) * kKeyTile, p.t_k);
      load_tile_async<kKeyTile, kHeadDim, kThreads>(v_tiles + (stage ^ 1) * kKeyTile * kLd, v, p.vs.seq,
                                                    (j + 1) * kKeyTile, p.t_k);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int n0 = j * kKeyTile;
    // As in the forward: warps with no query row left, or (causal) wholly before the tile, skip it.
    if (row0 < p.t_q && (!kCausal || n0 <= row0 + 15 + diag)) {
      const T* k_tile = k_tiles + stage * kKeyTile * kLd;
      const T* v_tile = v_tiles + stage * kKeyTile * kLd;

      // S = Q K^T and dP = dO V^T, 16 rows x kKeyTile keys each; Q and dO fragments come from
      // shared memory (holding them in registers too would spill at hs 128).
      float s[kKeyTile / 8][4] = {}, dp[kKeyTile / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t qa[4], da[4];
        ldmatrix_x4(qa, a_fragment_address(q_rows, kLd, 0, kk * 16, lane));
        ldmatrix_x4(da, a_fragment_address(do_rows, kLd, 0, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kKeyTile / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, bt_fragment_address(k_tile, kLd, nn * 16, kk * 16, lane));
          Mma<T>::run(s[2 * nn], qa, b[0], b[1]);
          Mma<T>::run(s[2 * nn + 1], qa, b[2], b[3]);
          ldmatrix_x4(b, bt_fragment_address(v_tile, kLd, nn * 16, kk * 16, lane));
          Mma<T>::run(dp[2 * nn], da, b[0], b[1]);
          Mma<T>::run(dp[2 * nn + 1], da, b[2], b[3]);
        }
      }

      // dS = P (dP - delta), P = exp2(S * scale_log2 - lse2); 0 for masked keys.
      const bool needs_mask = n0 + kKeyTile > p.t_k || (kCausal && n0 + kKeyTile - 1 > row0 + diag);
#pragma unroll
      for (int nt = 0; nt < kKeyTile / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + nt * 8 + 2 * t + (e & 1), row = row0 + g + 8 * (e >> 1);
          const bool visible = !needs_mask || (key < p.t_k && !(kCausal && key > row + diag));
          const float prob = visible ? fast_exp2(s[nt][e] * p.scale_log2 - lse2[e >> 1]) : 0.f;
          s[nt][e] = prob * (dp[nt][e] - delta[e >> 1]);
        }
      }

      // dQ += dS K: dS from the accumulators, K fragments via ldmatrix.trans.
#pragma unroll
      for (int kk = 0; kk < kKeyTile / 16; ++kk) {
        uint32_t a[4];
        accumulators_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kHeadDim / 16; ++dd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_fragment_address(k_tile, kLd, kk * 16, dd * 16, lane));
          Mma<T>::run(dq[2 * dd], a, b[0], b[1]);
          Mma<T>::run(dq[2 * dd + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

  const float factor[2] = {p.scale, p.scale};
  store_accumulator_rows<T, kHeadDim>(p.dq + bh * p.t_q * kHeadDim, row0, p.t_q, q_rows, dq, factor, lane);
}

template <typename T, int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kThreads, 1) flash_attention_bwd_dkdv_kernel(BwdParams<T> p) {
  constexpr int kLd = kHeadDim + kPad;
  constexpr int kQueryTile = kQueryTileFor<kHeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* k_tile = reinterpret_cast<T*>(smem);        // (kRowsPerBlock, kLd): this block's keys; dK staging
  T* v_tile = k_tile + kRowsPerBlock * kLd;      // (kRowsPerBlock, kLd); dV staging
  T* q_tiles = v_tile + kRowsPerBlock * kLd;     // 2 stages of (kQueryTile, kLd)
  T* do_tiles = q_tiles + 2 * kQueryTile * kLd;  // 2 stages of (kQueryTile, kLd)
  float* lse_tiles = reinterpret_cast<float*>(do_tiles + 2 * kQueryTile * kLd);  // 2 stages of kQueryTile
  float* delta_tiles = lse_tiles + 2 * kQueryTile;                               // 2 stages of kQueryTile

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int n0 = blockIdx.x * kRowsPerBlock;  // causal: the first keys are seen by the most queries
  const int head = blockIdx.y, batch = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(batch) * p.heads + head;
  const T* q = p.q + batch * p.qs.batch + head * p.qs.head;
  const T* dout = p.dout + batch * p.dos.batch + head * p.dos.head;
  const float* lse = p.lse + bh * p.t_q;
  const float* delta = p.delta + bh * p.t_q;
  const int diag = p.t_k - p.t_q;
  // Causal: query i sees key n iff n <= i + diag, so no query before n0 - diag sees this block.
  const int first_tile = kCausal ? max(0, n0 - diag) / kQueryTile : 0;
  const int n_tiles = (p.t_q + kQueryTile - 1) / kQueryTile - first_tile;

  auto load_query_tile = [&](int stage, int tile) {
    const int m0 = tile * kQueryTile;
    load_tile_async<kQueryTile, kHeadDim, kThreads>(q_tiles + stage * kQueryTile * kLd, q, p.qs.seq, m0, p.t_q);
    load_tile_async<kQueryTile, kHeadDim, kThreads>(do_tiles + stage * kQueryTile * kLd, dout, p.dos.seq, m0,
                                                    p.t_q);
    if (threadIdx.x < kQueryTile) {
      const int i = m0 + static_cast<int>(threadIdx.x);
      const bool valid = i < p.t_q;
      cp_async_4(lse_tiles + stage * kQueryTile + threadIdx.x, valid ? lse + i : lse, valid);
      cp_async_4(delta_tiles + stage * kQueryTile + threadIdx.x, valid ? delta + i : delta, valid);
    }
  };

  load_tile_async<kRowsPerBlock, kHeadDim, kThreads>(k_tile, p.k + batch * p.ks.batch + head * p.ks.head,
                                                     p.ks.seq, n0, p.t_k);
  load_tile_async<kRowsPerBlock, kHeadDim, kThreads>(v_tile, p.v + batch * p.vs.batch + head * p.vs.head,
                                                     p.vs.seq, n0, p.t_k);
  if (n_tiles > 0) load_query_tile(0, first_tile);
  cp_async_commit();

  const int key0 = n0 + warp * 16;  // this warp's first key
  T* k_rows = k_tile + warp * 16 * kLd;
  T* v_rows = v_tile + warp * 16 * kLd;
  float dk[kHeadDim / 8][4] = {}, dv[kHeadDim / 8][4] = {};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      load_query_tile(stage ^ 1, first_tile + j + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int m0 = (first_tile + j) * kQueryTile;
    // Warps whose keys all lie past the end have nothing to do; causal: neither has a warp
    // whose keys the tile's last query does not see.
    if (key0 < p.t_k && (!kCausal || m0 + kQueryTile - 1 + diag >= key0)) {
      const T* q_t = q_tiles + stage * kQueryTile * kLd;
      const T* do_t = do_tiles + stage * kQueryTile * kLd;
      const float* lse_t = lse_tiles + stage * kQueryTile;
      const float* delta_t = delta_tiles + stage * kQueryTile;

      // S^T = K Q^T: 16 keys x kQueryTile queries.
      float s[kQueryTile / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(a, a_fragment_address(k_rows, kLd, 0, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kQueryTile / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, bt_fragment_address(q_t, kLd, nn * 16, kk * 16, lane));
          Mma<T>::run(s[2 * nn], a, b[0], b[1]);
          Mma<T>::run(s[2 * nn + 1], a, b[2], b[3]);
        }
      }

      // P^T = exp2(S^T * scale_log2 - lse2[query]); 0 for queries past the end and, causal, for
      // queries before the key. (Key rows past Tk are zeros, computed but never stored: each MMA
      // output row depends only on its own A row.)
      const bool needs_mask = m0 + kQueryTile > p.t_q || (kCausal && key0 + 15 > m0 + diag);
#pragma unroll
      for (int nt = 0; nt < kQueryTile / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = nt * 8 + 2 * t + (e & 1), query = m0 + col, key = key0 + g + 8 * (e >> 1);
          const bool visible = !needs_mask || (query < p.t_q && !(kCausal && key > query + diag));
          s[nt][e] = visible ? fast_exp2(s[nt][e] * p.scale_log2 - lse_t[col] * kLog2e) : 0.f;
        }
      }

      // dV += P^T dO.
#pragma unroll
      for (int kk = 0; kk < kQueryTile / 16; ++kk) {
        uint32_t a[4];
        accumulators_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kHeadDim / 16; ++dd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_fragment_address(do_t, kLd, kk * 16, dd * 16, lane));
          Mma<T>::run(dv[2 * dd], a, b[0], b[1]);
          Mma<T>::run(dv[2 * dd + 1], a, b[2], b[3]);
        }
      }

      // dP^T = V dO^T, then dS^T = P^T (dP^T - delta[query]) in place of P^T.
      float dp[kQueryTile / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(a, a_fragment_address(v_rows, kLd, 0, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kQueryTile / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, bt_fragment_address(do_t, kLd, nn * 16, kk * 16, lane));
          Mma<T>::run(dp[2 * nn], a, b[0], b[1]);
          Mma<T>::run(dp[2 * nn + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < kQueryTile / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] *= dp[nt][e] - delta_t[nt * 8 + 2 * t + (e & 1)];
      }

      // dK += dS^T Q.
#pragma unroll
      for (int kk = 0; kk < kQueryTile / 16; ++kk) {
        uint32_t a[4];
        accumulators_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kHeadDim / 16; ++dd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_fragment_address(q_t, kLd, kk * 16, dd * 16, lane));
          Mma<T>::run(dk[2 * dd], a, b[0], b[1]);
          Mma<T>::run(dk[2 * dd + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }
  // No query tile (Tq = 0) means nothing waited for the K and V copies, which every thread shares.
  if (n_tiles <= 0) {
    cp_async_wait<0>();
    __syncthreads();
  }

  const float dk_factor[2] = {p.scale, p.scale}, dv_factor[2] = {1.f, 1.f};
  store_accumulator_rows<T, kHeadDim>(p.dk + bh * p.t_k * kHeadDim, key0, p.t_k, k_rows, dk, dk_factor, lane);
  store_accumulator_rows<T, kHeadDim>(p.dv + bh * p.t_k * kHeadDim, key0, p.t_k, v_rows, dv, dv_factor, lane);
}

// ---------------------------------------------------------------------------------------------
// Launch.

template <typename T, int kHeadDim, bool kCausal>
cudaError_t launch(const BwdParams<T>& p, int batch, cudaStream_t stream) {
  auto dq_kernel = flash_attention_bwd_dq_kernel<T, kHeadDim, kCausal>;
  auto dkdv_kernel = flash_attention_bwd_dkdv_kernel<T, kHeadDim, kCausal>;
  constexpr int dq_smem = dq_smem_bytes<kHeadDim>(), dkdv_smem = dkdv_smem_bytes<kHeadDim>();
  cudaError_t err = cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dq_smem);
  if (err == cudaSuccess)
    err = cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dkdv_smem);
  if (err != cudaSuccess) return err;
  if (p.t_q > 0) {
    const dim3 dq_grid((p.t_q + kRowsPerBlock - 1) / kRowsPerBlock, p.heads, batch);
    dq_kernel<<<dq_grid, kThreads, dq_smem, stream>>>(p);
  }
  const dim3 dkdv_grid((p.t_k + kRowsPerBlock - 1) / kRowsPerBlock, p.heads, batch);
  dkdv_kernel<<<dkdv_grid, kThreads, dkdv_smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const BwdParams<T>& p, AttentionShape shape, bool causal, cudaStream_t stream) {
  if (shape.t_q > 0) {
    const dim3 grid((shape.t_q + kWarps - 1) / kWarps, shape.heads, shape.batch);
    attention_bwd_delta_kernel<T><<<grid, kThreads, 0, stream>>>(p, shape.head_dim);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  if constexpr (std::is_same_v<T, float>) {
    return backward_fp32(p, shape.batch, shape.head_dim, causal, stream);
  } else {
    switch (shape.head_dim * 2 + causal) {
      case 32 * 2: return launch<T, 32, false>(p, shape.batch, stream);
      case 32 * 2 + 1: return launch<T, 32, true>(p, shape.batch, stream);
      case 64 * 2: return launch<T, 64, false>(p, shape.batch, stream);
      case 64 * 2 + 1: return launch<T, 64, true>(p, shape.batch, stream);
      case 128 * 2: return launch<T, 128, false>(p, shape.batch, stream);
      case 128 * 2 + 1: return launch<T, 128, true>(p, shape.batch, stream);
      default: return cudaErrorInvalidValue;
    }
  }
}

template <typename T>
BwdParams<T> make_params(const void* q, const void* k, const void* v, const void* out, const float* lse,
                         const void* dout, void* dq, void* dk, void* dv, float* delta, AttentionShape shape,
                         const AttentionStrides (&strides)[5], float scale) {
  return {static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
          static_cast<const T*>(out), static_cast<const T*>(dout), lse, delta, static_cast<T*>(dq),
          static_cast<T*>(dk), static_cast<T*>(dv), strides[0], strides[1], strides[2], strides[3],
          strides[4], shape.heads, shape.t_q, shape.t_k, scale, scale * kLog2e};
}

}  // namespace

cudaError_t attention_backward(const void* q, const void* k, const void* v, const void* out, const float* lse,
                               const void* dout, void* dq, void* dk, void* dv, float* delta,
                               AttentionShape shape, AttentionStrides q_strides, AttentionStrides k_strides,
                               AttentionStrides v_strides, AttentionStrides out_strides,
                               AttentionStrides dout_strides, float scale, bool causal, DType dtype,
                               cudaStream_t stream) {
  if (shape.batch * shape.heads == 0) return cudaSuccess;
  if (shape.t_k < 1 || (causal && shape.t_q > shape.t_k)) return cudaErrorInvalidValue;
  const AttentionStrides strides[5] = {q_strides, k_strides, v_strides, out_strides, dout_strides};
  return device::with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed(make_params<T>(q, k, v, out, lse, dout, dq, dk, dv, delta, shape, strides, scale), shape,
                        causal, stream);
  });
}

}  // namespace mini_llm
