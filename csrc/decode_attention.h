// Launchers of the flash-decoding kernels (csrc/decode_attention.cu): attention of a few new
// queries per sequence against a KV cache, with plain pointers so bindings.cpp (and the
// standalone program csrc/standalone/decode_attention.cu) can call them without torch.
//
// Layout, every tensor contiguous: q and out (B, nh, Tq, hs); k_cache and v_cache
// (B, nkv, Tmax, hs) with nh % nkv == 0 (query head h reads kv head h / (nh / nkv)), hs in
// {64, 128}, base pointers 16-byte aligned; cache_lens (B,) int32, the filled length of each
// sequence's cache counting the Tq new positions, in [Tq, Tmax]. Query i of sequence b sits at
// position cache_lens[b] - Tq + i and sees keys 0 .. that position (bottom-right causal). Lengths
// outside [Tq, Tmax] are clamped to [0, Tmax] so nothing is read out of bounds; a query that then
// sees no key gets zeros.
#pragma once

#include <cstdint>

#include "common.h"

namespace mini_llm {

// The head dims the kernels are compiled for. mini_llm/ops/checks.py: CUDA_DECODE_HEAD_DIMS.
constexpr int kDecodeHeadDims[] = {64, 128};

struct DecodeAttentionShape {
  int batch, heads, kv_heads, t_q, t_max, head_dim;
};

// How the cache is cut. Each (sequence, kv head) is split along its positions into num_splits
// pieces of keys_per_split; blocks whose piece starts past the sequence's length exit at once.
// With num_splits > 1 the pieces' partial results go to a float32 workspace of workspace_floats
// (B * nh * Tq * num_splits * (hs + 1)) and a second kernel merges them; with 1 there is no
// workspace and no second kernel.
struct DecodeAttentionPlan {
  int num_splits, keys_per_split;
  int64_t workspace_floats;
};

// requested_splits 0 picks enough splits to fill the current device even for one sequence;
// n > 0 asks for at most n (tests, tuning). cudaErrorInvalidValue for unsupported shapes.
cudaError_t decode_attention_plan(DecodeAttentionShape shape, DType dtype, int requested_splits,
                                  DecodeAttentionPlan* plan);

// out = softmax(scale * q k^T + causal mask) v per sequence; workspace holds at least
// plan.workspace_floats floats (may be null when that is 0). Runs on `stream`.
cudaError_t decode_attention(const void* q, const void* k_cache, const void* v_cache, const int* cache_lens,
                             void* out, float* workspace, DecodeAttentionShape shape,
                             DecodeAttentionPlan plan, float scale, DType dtype, cudaStream_t stream);

}  // namespace mini_llm
