// Launchers of the FlashAttention-2 kernels (csrc/attention_fwd.cu, attention_bwd.cu; float32 in
// attention_fp32.cu): plain
// pointers, sizes and strides, so bindings.cpp can call them without any CUDA header.
//
// Layout: q (B, nh, Tq, hs), k and v (B, nh, Tk, hs), hs in {32, 64, 128}. Inputs may be strided
// views (the model passes .transpose(1, 2) of (B, T, nh, hs)): the head dim must have stride 1,
// the other strides must be multiples of 8 elements (4 for float32) and every base pointer
// 16-byte aligned, because tiles are copied in 16-byte pieces. Outputs (out, lse, dq, dk, dv) are
// written contiguous. causal is bottom-right aligned: query i sits at key position
// i + Tk - Tq and sees keys 0 .. i + Tk - Tq (requires Tq <= Tk). lse is float32 (B, nh, Tq): the
// natural-log logsumexp of scale * q.k over the keys each query sees.
#pragma once

#include <cstdint>

#include "common.h"

namespace mini_llm {

// The head dims the kernels are compiled for. mini_llm/ops/checks.py: ATTENTION_HEAD_DIMS.
constexpr int kAttentionHeadDims[] = {32, 64, 128};

// Element strides of a (B, nh, T, hs) tensor's first three dims (the last has stride 1).
struct AttentionStrides {
  int64_t batch, head, seq;
};

struct AttentionShape {
  int batch, heads, t_q, t_k, head_dim;
};

// out (B, nh, Tq, hs) in q's dtype, lse (B, nh, Tq) float32. bf16 / fp16 run on tensor cores
// (mma.sync); float32 runs a simple FMA kernel (exact float32 math, slower).
cudaError_t attention_forward(const void* q, const void* k, const void* v, void* out, float* lse,
                              AttentionShape shape, AttentionStrides q_strides,
                              AttentionStrides k_strides, AttentionStrides v_strides, float scale,
                              bool causal, DType dtype, cudaStream_t stream);

// Gradients of out = attention(q, k, v) given dout = dL/dout and the forward's out and lse: dq
// (B, nh, Tq, hs), dk and dv (B, nh, Tk, hs) in q's dtype, contiguous. out and dout may be strided
// like q. delta is a float32 workspace of B * nh * Tq elements.
cudaError_t attention_backward(const void* q, const void* k, const void* v, const void* out, const float* lse,
                               const void* dout, void* dq, void* dk, void* dv, float* delta,
                               AttentionShape shape, AttentionStrides q_strides, AttentionStrides k_strides,
                               AttentionStrides v_strides, AttentionStrides out_strides,
                               AttentionStrides dout_strides, float scale, bool causal, DType dtype,
                               cudaStream_t stream);

}  // namespace mini_llm
