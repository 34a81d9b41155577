// Attention for float32 inputs on CUDA cores: exact float32 arithmetic (no tensor cores, no tf32),
// written for clarity rather than speed. The same flash algorithm as the tensor-core kernels
// (tiles of keys, online softmax, nothing of size T x T stored), one lane per key or query of a
// 32-wide tile. Called by attention_forward / attention_backward for DType::f32; tested by
// tests/test_cuda_attention.py.
//
// attention_fwd_fp32_kernel:  a warp owns 2 query rows; per tile of 32 keys, lane j scores key j,
//                             the warp takes the row max and sum with shuffles, and each lane
//                             accumulates P V for its output columns (lane, lane + 32, ...),
//                             receiving each p_j by shuffle.
// attention_bwd_dq_fp32_kernel:   the same shape: lane j computes dS for key j; dQ += dS K.
// attention_bwd_dkdv_fp32_kernel: roles swapped: a warp owns 2 key rows, lane i takes query i of
//                             a 32-query tile; dV += P^T dO, dK += dS^T Q.
#include <cuda_runtime.h>

#include "attention_common.cuh"

namespace mini_llm {
namespace attention_detail {
namespace {

// 4 warps per block (not the tensor-core kernels' 8): the backward's tiles then fit in the 48 KiB
// of static shared memory at hs 128.
constexpr int kF32Warps = 4;
constexpr int kF32Threads = kF32Warps * 32;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kF32Warps * kRowsPerWarp;
constexpr int kTile = 32;  // keys (or queries) per tile: one per lane

// rows[r][d] = src[(row0 + r) * stride + d] * factor, zero past `rows_valid`. All threads.
template <int kRows, int kHeadDim, int kLd>
__device__ void load_rows(float (*rows)[kLd], const float* src, int64_t stride, int row0, int rows_valid,
                          float factor = 1.f) {
  for (int i = threadIdx.x; i < kRows * kHeadDim; i += kF32Threads) {
    const int r = i / kHeadDim, d = i % kHeadDim;
    rows[r][d] = row0 + r < rows_valid ? src[(row0 + r) * stride + d] * factor : 0.f;
  }
}

template <int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kF32Threads) attention_fwd_fp32_kernel(FwdParams<float> p) {
  constexpr int kPerLane = kHeadDim / 32;  // output columns per lane: lane, lane + 32, ...
  __shared__ float q_rows[kRowsPerBlock][kHeadDim];  // pre-scaled by scale * log2(e)
  __shared__ float k_tile[kTile][kHeadDim + 1];      // +1: lane j reads row j, conflict-free
  __shared__ float v_tile[kTile][kHeadDim];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kRowsPerBlock;  // causal: longest rows first
  const int head = blockIdx.y, batch = blockIdx.z;
  const float* q = p.q + batch * p.qs.batch + head * p.qs.head;
  const float* k = p.k + batch * p.ks.batch + head * p.ks.head;
  const float* v = p.v + batch * p.vs.batch + head * p.vs.head;
  const int diag = p.t_k - p.t_q;  // query i sits at key position i + diag
  const int key_end = kCausal ? min(p.t_k, m0 + kRowsPerBlock + diag) : p.t_k;

  load_rows<kRowsPerBlock, kHeadDim>(q_rows, q, p.qs.seq, m0, p.t_q, p.scale_log2);
  float o[kRowsPerWarp][kPerLane] = {};
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp];  // log2 units; the whole row's sum
  for (int r = 0; r < kRowsPerWarp; ++r) row_max[r] = -INFINITY, row_sum[r] = 0.f;

  for (int n0 = 0; n0 < key_end; n0 += kTile) {
    __syncthreads();  // q_rows written / previous tile consumed
    // Zeros past the end: p is 0 there, and 0 * V must be 0 too.
    load_rows<kTile, kHeadDim>(k_tile, k, p.ks.seq, n0, p.t_k);
    load_rows<kTile, kHeadDim>(v_tile, v, p.vs.seq, n0, p.t_k);
    __syncthreads();
    float s[kRowsPerWarp] = {};
    for (int d = 0; d < kHeadDim; ++d) {
      const float kd = k_tile[lane][d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) s[r] = fmaf(q_rows[warp * kRowsPerWarp + r][d], kd, s[r]);
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = m0 + warp * kRowsPerWarp + r, key = n0 + lane;
      if (key >= p.t_k || (kCausal && key > row + diag)) s[r] = -INFINITY;
      const float new_max = warp_max(fmaxf(row_max[r], s[r]));
      const float base = new_max == -INFINITY ? 0.f : new_max;  // no visible key yet: exps stay 0
      const float rescale = exp2f(row_max[r] - base);
      row_max[r] = new_max;
      s[r] = exp2f(s[r] - base);  // now p_j, j = lane
      row_sum[r] = row_sum[r] * rescale + warp_sum(s[r]);
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) o[r][c] *= rescale;
    }
    for (int j = 0; j < kTile; ++j) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float pj = __shfl_sync(0xffffffffu, s[r], j);
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) o[r][c] = fmaf(pj, v_tile[j][lane + 32 * c], o[r][c]);
      }
    }
  }

  const int64_t bh = static_cast<int64_t>(batch) * p.heads + head;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = m0 + warp * kRowsPerWarp + r;
    if (row >= p.t_q) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) p.out[(bh * p.t_q + row) * kHeadDim + lane + 32 * c] = o[r][c] / row_sum[r];
    if (lane == 0) p.lse[bh * p.t_q + row] = (row_max[r] + log2f(row_sum[r])) * kLn2;
  }
}

template <int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kF32Threads) attention_bwd_dq_fp32_kernel(BwdParams<float> p) {
  constexpr int kPerLane = kHeadDim / 32;
  __shared__ float q_rows[kRowsPerBlock][kHeadDim];  // pre-scaled by scale * log2(e)
  __shared__ float do_rows[kRowsPerBlock][kHeadDim];
  __shared__ float k_tile[kTile][kHeadDim + 1];
  __shared__ float v_tile[kTile][kHeadDim + 1];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kRowsPerBlock;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(batch) * p.heads + head;
  const float* k = p.k + batch * p.ks.batch + head * p.ks.head;
  const float* v = p.v + batch * p.vs.batch + head * p.vs.head;
  const int diag = p.t_k - p.t_q;
  const int key_end = kCausal ? min(p.t_k, m0 + kRowsPerBlock + diag) : p.t_k;

  load_rows<kRowsPerBlock, kHeadDim>(q_rows, p.q + batch * p.qs.batch + head * p.qs.head, p.qs.seq, m0, p.t_q,
                                     p.scale_log2);
  load_rows<kRowsPerBlock, kHeadDim>(do_rows, p.dout + batch * p.dos.batch + head * p.dos.head, p.dos.seq, m0,
                                     p.t_q);
  float lse2[kRowsPerWarp], delta[kRowsPerWarp];  // per row: lse in log2 units, rowsum(dO * O)
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = m0 + warp * kRowsPerWarp + r;
    lse2[r] = row < p.t_q ? p.lse[bh * p.t_q + row] * kLog2e : 0.f;
    delta[r] = row < p.t_q ? p.delta[bh * p.t_q + row] : 0.f;
  }
  float dq[kRowsPerWarp][kPerLane] = {};

  for (int n0 = 0; n0 < key_end; n0 += kTile) {
    __syncthreads();
    load_rows<kTile, kHeadDim>(k_tile, k, p.ks.seq, n0, p.t_k);
    load_rows<kTile, kHeadDim>(v_tile, v, p.vs.seq, n0, p.t_k);
    __syncthreads();
    float ds[kRowsPerWarp] = {}, dp[kRowsPerWarp] = {};
    for (int d = 0; d < kHeadDim; ++d) {
      const float kd = k_tile[lane][d], vd = v_tile[lane][d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        ds[r] = fmaf(q_rows[warp * kRowsPerWarp + r][d], kd, ds[r]);   // the score, for now
        dp[r] = fmaf(do_rows[warp * kRowsPerWarp + r][d], vd, dp[r]);  // dP = dO . v_j
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = m0 + warp * kRowsPerWarp + r, key = n0 + lane;
      const bool visible = key < p.t_k && !(kCausal && key > row + diag);
      ds[r] = visible ? exp2f(ds[r] - lse2[r]) * (dp[r] - delta[r]) : 0.f;  // dS = P (dP - delta)
    }
    for (int j = 0; j < kTile; ++j) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float dsj = __shfl_sync(0xffffffffu, ds[r], j);
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) dq[r][c] = fmaf(dsj, k_tile[j][lane + 32 * c], dq[r][c]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = m0 + warp * kRowsPerWarp + r;
    if (row >= p.t_q) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) p.dq[(bh * p.t_q + row) * kHeadDim + lane + 32 * c] = dq[r][c] * p.scale;
  }
}

template <int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kF32Threads) attention_bwd_dkdv_fp32_kernel(BwdParams<float> p) {
  constexpr int kPerLane = kHeadDim / 32;
  __shared__ float k_rows[kRowsPerBlock][kHeadDim];  // pre-scaled by scale * log2(e)
  __shared__ float v_rows[kRowsPerBlock][kHeadDim];
  __shared__ float q_tile[kTile][kHeadDim + 1];
  __shared__ float do_tile[kTile][kHeadDim + 1];
  __shared__ float lse2[kTile], delta[kTile];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = blockIdx.x * kRowsPerBlock;  // causal: the first keys are seen by the most queries
  const int head = blockIdx.y, batch = blockIdx.z;
  const int64_t bh = static_cast<int64_t>(batch) * p.heads + head;
  const float* q = p.q + batch * p.qs.batch + head * p.qs.head;
  const float* dout = p.dout + batch * p.dos.batch + head * p.dos.head;
  const int diag = p.t_k - p.t_q;
  // Causal: query i sees key n iff n <= i + diag, so no query before n0 - diag sees this block.
  const int first_query = kCausal ? max(0, n0 - diag) / kTile * kTile : 0;

  load_rows<kRowsPerBlock, kHeadDim>(k_rows, p.k + batch * p.ks.batch + head * p.ks.head, p.ks.seq, n0, p.t_k,
                                     p.scale_log2);
  load_rows<kRowsPerBlock, kHeadDim>(v_rows, p.v + batch * p.vs.batch + head * p.vs.head, p.vs.seq, n0, p.t_k);
  float dk[kRowsPerWarp][kPerLane] = {}, dv[kRowsPerWarp][kPerLane] = {};

  for (int m0 = first_query; m0 < p.t_q; m0 += kTile) {
    __syncthreads();
    load_rows<kTile, kHeadDim>(q_tile, q, p.qs.seq, m0, p.t_q);
    load_rows<kTile, kHeadDim>(do_tile, dout, p.dos.seq, m0, p.t_q);
    if (threadIdx.x < kTile) {
      const bool valid = m0 + threadIdx.x < p.t_q;
      lse2[threadIdx.x] = valid ? p.lse[bh * p.t_q + m0 + threadIdx.x] * kLog2e : 0.f;
      delta[threadIdx.x] = valid ? p.delta[bh * p.t_q + m0 + threadIdx.x] : 0.f;
    }
    __syncthreads();
    float prob[kRowsPerWarp] = {}, ds[kRowsPerWarp] = {};  // lane i: query m0 + i
    for (int d = 0; d < kHeadDim; ++d) {
      const float qd = q_tile[lane][d], dod = do_tile[lane][d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        prob[r] = fmaf(k_rows[warp * kRowsPerWarp + r][d], qd, prob[r]);  // the score, for now
        ds[r] = fmaf(v_rows[warp * kRowsPerWarp + r][d], dod, ds[r]);     // dP = v . dO_i, for now
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int key = n0 + warp * kRowsPerWarp + r, query = m0 + lane;
      const bool visible = query < p.t_q && !(kCausal && key > query + diag);
      prob[r] = visible ? exp2f(prob[r] - lse2[lane]) : 0.f;
      ds[r] = prob[r] * (ds[r] - delta[lane]);
    }
    for (int i = 0; i < kTile; ++i) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float pi = __shfl_sync(0xffffffffu, prob[r], i), dsi = __shfl_sync(0xffffffffu, ds[r], i);
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) {
          dv[r][c] = fmaf(pi, do_tile[i][lane + 32 * c], dv[r][c]);
          dk[r][c] = fmaf(dsi, q_tile[i][lane + 32 * c], dk[r][c]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int key = n0 + warp * kRowsPerWarp + r;
    if (key >= p.t_k) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      p.dk[(bh * p.t_k + key) * kHeadDim + lane + 32 * c] = dk[r][c] * p.scale;
      p.dv[(bh * p.t_k + key) * kHeadDim + lane + 32 * c] = dv[r][c];
    }
  }
}

template <int kHeadDim, bool kCausal>
cudaError_t launch_forward(const FwdParams<float>& p, int batch, cudaStream_t stream) {
  const dim3 grid((p.t_q + kRowsPerBlock - 1) / kRowsPerBlock, p.heads, batch);
  attention_fwd_fp32_kernel<kHeadDim, kCausal><<<grid, kF32Threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int kHeadDim, bool kCausal>
cudaError_t launch_backward(const BwdParams<float>& p, int batch, cudaStream_t stream) {
  if (p.t_q > 0) {
    const dim3 dq_grid((p.t_q + kRowsPerBlock - 1) / kRowsPerBlock, p.heads, batch);
    attention_bwd_dq_fp32_kernel<kHeadDim, kCausal><<<dq_grid, kF32Threads, 0, stream>>>(p);
  }
  const dim3 dkdv_grid((p.t_k + kRowsPerBlock - 1) / kRowsPerBlock, p.heads, batch);
  attention_bwd_dkdv_fp32_kernel<kHeadDim, kCausal><<<dkdv_grid, kF32Threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t forward_fp32(const FwdParams<float>& p, int batch, int head_dim, bool causal, cudaStream_t stream) {
  switch (head_dim * 2 + causal) {
    case 32 * 2: return launch_forward<32, false>(p, batch, stream);
    case 32 * 2 + 1: return launch_forward<32, true>(p, batch, stream);
    case 64 * 2: return launch_forward<64, false>(p, batch, stream);
    case 64 * 2 + 1: return launch_forward<64, true>(p, batch, stream);
    case 128 * 2: return launch_forward<128, false>(p, batch, stream);
    case 128 * 2 + 1: return launch_forward<128, true>(p, batch, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t backward_fp32(const BwdParams<float>& p, int batch, int head_dim, bool causal, cudaStream_t stream) {
  switch (head_dim * 2 + causal) {
    case 32 * 2: return launch_backward<32, false>(p, batch, stream);
    case 32 * 2 + 1: return launch_backward<32, true>(p, batch, stream);
    case 64 * 2: return launch_backward<64, false>(p, batch, stream);
    case 64 * 2 + 1: return launch_backward<64, true>(p, batch, stream);
    case 128 * 2: return launch_backward<128, false>(p, batch, stream);
    case 128 * 2 + 1: return launch_backward<128, true>(p, batch, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace attention_detail
}  // namespace mini_llm
