// FlashAttention-2 forward on tensor cores (bf16 / fp16 inputs, float32 accumulation); float32
// inputs go to attention_fp32.cu. Launcher: attention_forward (attention.h). Tested by
// tests/test_cuda_attention.py; standalone check + timing: csrc/standalone/attention.cu.
//
// flash_attention_fwd_kernel: one block of 8 warps owns 128 query rows of one (batch, head);
// each warp owns 16 rows and keeps their Q fragments in registers for the whole kernel. The keys
// are visited in tiles of 64: K and V tiles stream through shared memory with cp.async, two
// stages, so tile j + 1 is copied while tile j is computed. Per tile, each warp computes
// S = Q K^T (mma.sync m16n8k16, float32 accumulators), updates the running row max and sum
// (online softmax, base 2), rescales its O accumulator and adds P V, P going from the S
// accumulators straight into A fragments (see attention_common.cuh). Nothing of size T x T is
// ever stored. Causal: key tiles past a block's last query are never loaded, a warp skips tiles
// entirely past its own rows, and only tiles that cross the diagonal (or the end of the keys)
// pay for masking. The output is staged through shared memory for 16-byte stores.

#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "attention.h"
#include "attention_common.cuh"

namespace mini_llm {
namespace {

using namespace attention_detail;

constexpr int kBlockM = kWarps * 16;  // query rows per block: 16 per warp
constexpr int kBlockN = 64;           // keys per tile

template <int kHeadDim>
constexpr int fwd_smem_bytes() {  // Q (then O) tile + two stages of K and V tiles, 2-byte elements
  return (kBlockM + 4 * kBlockN) * (kHeadDim + kPad) * 2;
}

template <typename T, int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(kThreads) flash_attention_fwd_kernel(FwdParams<T> p) {
  constexpr int kLd = kHeadDim + kPad;  // shared-tile row stride, in elements
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);     // (kBlockM, kLd); reused for the O tile at the end
  T* k_tiles = q_tile + kBlockM * kLd;        // 2 stages of (kBlockN, kLd)
  T* v_tiles = k_tiles + 2 * kBlockN * kLd;   // 2 stages of (kBlockN, kLd)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // accumulator row g (and g + 8), columns 2t, 2t + 1
  // Causal blocks differ in work (the last rows see the most keys): launch the longest first so
  // the short ones fill the tail of the grid.
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kBlockM;
  const int head = blockIdx.y, batch = blockIdx.z;
  const T* q = p.q + batch * p.qs.batch + head * p.qs.head;
  const T* k = p.k + batch * p.ks.batch + head * p.ks.head;
  const T* v = p.v + batch * p.vs.batch + head * p.vs.head;
  const int diag = p.t_k - p.t_q;  // query i sits at key position i + diag (bottom-right aligned)
  // Causal: no query of this block sees a key at or past m0 + kBlockM + diag.
  const int key_end = kCausal ? min(p.t_k, m0 + kBlockM + diag) : p.t_k;
  const int n_tiles = (key_end + kBlockN - 1) / kBlockN;

  load_tile_async<kBlockM, kHeadDim, kThreads>(q_tile, q, p.qs.seq, m0, p.t_q);
  load_tile_async<kBlockN, kHeadDim, kThreads>(k_tiles, k, p.ks.seq, 0, p.t_k);
  load_tile_async<kBlockN, kHeadDim, kThreads>(v_tiles, v, p.vs.seq, 0, p.t_k);
  cp_async_commit();

  const int row0 = m0 + warp * 16;  // this warp's first query row
  uint32_t q_frag[kHeadDim / 16][4];
  float o[kHeadDim / 8][4] = {};  // O accumulator: 16 rows x kHeadDim, unnormalised
  // Per accumulator row (g, g + 8): running max of the scores in log2 units, and this lane's
  // share of the running sum of exp2(score - max) (the quad's 4 shares are added at the end).
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {  // prefetch tile j + 1 into the other stage (freed at the end of j - 1)
      load_tile_async<kBlockN, kHeadDim, kThreads>(k_tiles + (stage ^ 1) * kBlockN * kLd, k, p.ks.seq,
                                                   (j + 1) * kBlockN, p.t_k);
      load_tile_async<kBlockN, kHeadDim, kThreads>(v_tiles + (stage ^ 1) * kBlockN * kLd, v, p.vs.seq,
                                                   (j + 1) * kBlockN, p.t_k);
      cp_async_commit();
      cp_async_wait<1>();  // tile j (and Q) landed; j + 1 may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk)
        ldmatrix_x4(q_frag[kk], a_fragment_address(q_tile, kLd, warp * 16, kk * 16, lane));
    }
    const int n0 = j * kBlockN;
    // A warp whose rows all lie past Tq (short sequences) has nothing to compute; causal: a tile
    // wholly past this warp's last query is skipped. (Tile 0 never is for a warp with a row
    // below Tq: every query sees key 0, so row_max is finite from the first tile on.)
    if (row0 < p.t_q && (!kCausal || n0 <= row0 + 15 + diag)) {
      const T* k_tile = k_tiles + stage * kBlockN * kLd;
      const T* v_tile = v_tiles + stage * kBlockN * kLd;

      // S = Q K^T for 16 rows x kBlockN keys.
      float s[kBlockN / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
        for (int nn = 0; nn < kBlockN / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, bt_fragment_address(k_tile, kLd, nn * 16, kk * 16, lane));
          Mma<T>::run(s[2 * nn], q_frag[kk], b[0], b[1]);
          Mma<T>::run(s[2 * nn + 1], q_frag[kk], b[2], b[3]);
        }
      }

      // Scale into log2 units (before the max, so a negative scale is right too), then mask keys
      // past the end and, for causal, keys after each query.
      const bool needs_mask = n0 + kBlockN > p.t_k || (kCausal && n0 + kBlockN - 1 > row0 + diag);
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] *= p.scale_log2;
          if (needs_mask) {
            const int key = n0 + nt * 8 + 2 * t + (e & 1);
            const int row = row0 + g + (e >> 1) * 8;
            if (key >= p.t_k || (kCausal && key > row + diag)) s[nt][e] = -INFINITY;
          }
        }
      }

      // Online softmax: new max per row, rescale what was accumulated under the old max.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float new_max = row_max[r];
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt)
          new_max = fmaxf(new_max, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        new_max = quad_max(new_max);
        // A row that has seen no visible key yet keeps max -inf; subtracting 0 instead keeps its
        // exps at exp2(-inf) = 0 rather than NaN.
        const float base = new_max == -INFINITY ? 0.f : new_max;
        const float rescale = fast_exp2(row_max[r] - base);
        row_max[r] = new_max;
        row_sum[r] *= rescale;
#pragma unroll
        for (int dt = 0; dt < kHeadDim / 8; ++dt) {
          o[dt][2 * r] *= rescale;
          o[dt][2 * r + 1] *= rescale;
        }
#pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt) {
          s[nt][2 * r] = fast_exp2(s[nt][2 * r] - base);
          s[nt][2 * r + 1] = fast_exp2(s[nt][2 * r + 1] - base);
          row_sum[r] += s[nt][2 * r] + s[nt][2 * r + 1];
        }
      }

      // O += P V: P (16 x kBlockN) from the accumulators, V fragments via ldmatrix.trans.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[4];
        accumulators_to_a<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dd = 0; dd < kHeadDim / 16; ++dd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_fragment_address(v_tile, kLd, kk * 16, dd * 16, lane));
          Mma<T>::run(o[2 * dd], a, b[0], b[1]);
          Mma<T>::run(o[2 * dd + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // Epilogue: O / sum, and lse = ln(sum exp(score)) = (max + log2(sum)) * ln 2. (Rows past Tq,
  // whose sums may be 0, are never stored.)
  const int64_t bh = static_cast<int64_t>(batch) * p.heads + head;
  float inv_sum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = quad_sum(row_sum[r]);
    inv_sum[r] = 1.f / total;
    const int row = row0 + g + 8 * r;
    if (t == 0 && row < p.t_q) p.lse[bh * p.t_q + row] = (row_max[r] + log2f(total)) * kLn2;
  }
  // Staged in this warp's own Q rows: its Q fragments are in registers by now.
  store_accumulator_rows<T, kHeadDim>(p.out + bh * p.t_q * kHeadDim, row0, p.t_q, q_tile + warp * 16 * kLd, o,
                                      inv_sum, lane);
}

// ---------------------------------------------------------------------------------------------
// Launch.

template <typename T, int kHeadDim, bool kCausal>
cudaError_t launch(const FwdParams<T>& p, int batch, cudaStream_t stream) {
  auto kernel = flash_attention_fwd_kernel<T, kHeadDim, kCausal>;
  constexpr int smem = fwd_smem_bytes<kHeadDim>();
  // Above 48 KiB, dynamic shared memory must be opted into per kernel.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.t_q + kBlockM - 1) / kBlockM, p.heads, batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const void* q, const void* k, const void* v, void* out, float* lse, AttentionShape shape,
                         AttentionStrides qs, AttentionStrides ks, AttentionStrides vs, float scale, bool causal,
                         cudaStream_t stream) {
  const FwdParams<T> p{static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                       static_cast<T*>(out), lse, qs, ks, vs, shape.heads, shape.t_q, shape.t_k,
                       scale * kLog2e};
  if constexpr (std::is_same_v<T, float>) {
    return forward_fp32(p, shape.batch, shape.head_dim, causal, stream);
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

}  // namespace

cudaError_t attention_forward(const void* q, const void* k, const void* v, void* out, float* lse,
                              AttentionShape shape, AttentionStrides q_strides,
                              AttentionStrides k_strides, AttentionStrides v_strides, float scale,
                              bool causal, DType dtype, cudaStream_t stream) {
  if (shape.batch * shape.heads * shape.t_q == 0) return cudaSuccess;  // nothing to compute
  if (shape.t_k < 1 || (causal && shape.t_q > shape.t_k)) return cudaErrorInvalidValue;
  return device::with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_typed<T>(q, k, v, out, lse, shape, q_strides, k_strides, v_strides, scale, causal, stream);
  });
}

}  // namespace mini_llm
