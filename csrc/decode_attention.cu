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
//    its output accumulator, with one of two kinds of per-warp math (decode_attention_warps.cuh):
//    MmaWarp on tensor cores (bf16, fp16), FmaWarp on CUDA cores (float32, exact float32 math).
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

#include "decode_attention_warps.cuh"
#include "device_common.cuh"

namespace mini_llm {
namespace {

using namespace device;
using namespace decode_detail;

constexpr int kStages = 3;  // K/V tiles each warp keeps in flight
constexpr int kMaxGridYZ = 65535;
// The automatic plan aims at this many resident blocks per SM (a block takes 56-60 KiB of shared
// memory: 3 fit on an H100, 2 on an A100) and gives each split at least kMinKeysPerSplit keys, so
// a split's pipeline gets going before it ends.
constexpr int kBlocksPerSm = 2;
constexpr int kMinKeysPerSplit = 256;

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
  m = warp_max(m);

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

bool supported(const DecodeAttentionShape& s) {
  if (s.batch < 0 || s.heads <= 0 || s.kv_heads <= 0 || s.heads % s.kv_heads || s.t_q < 0 || s.t_max < s.t_q)
    return false;
  if (!one_of(kDecodeHeadDims, s.head_dim)) return false;
  const int64_t row_chunks = ceil_div(static_cast<int64_t>(s.heads / s.kv_heads) * s.t_q, kRows);
  return static_cast<int64_t>(s.batch) * s.kv_heads <= INT_MAX && row_chunks <= kMaxGridYZ;
}

// Calls f(TypeTag<T>{}, std::integral_constant<int, HS>{}) for the runtime dtype and head size.
template <typename F>
cudaError_t dispatch(DType dtype, int head_dim, F&& f) {
  return with_dtype(dtype, [&](auto tag) {
    if (head_dim == 64) return f(tag, std::integral_constant<int, 64>{});
    if (head_dim == 128) return f(tag, std::integral_constant<int, 128>{});
    return cudaErrorInvalidValue;
  });
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
