"""End-to-end rows for one kernel set: training throughput and MFU, decode tokens/s with and
without the KV cache, peak memory.

MFU (model FLOPs utilisation) = the FLOPs a training token needs x tokens/s / the measured
matmul ceiling. FLOPs per token: 6N for the weight matmuls (2N forward, 4N backward, N the
non-embedding parameters) plus 12 L T C for attention's two T x T matmuls (forward and backward):
the formula of PaLM's appendix B, also nanoGPT's.
"""

import torch

from mini_llm import nvtx, ops
from mini_llm.generate import generate
from mini_llm.profile import synthetic_training

from .timing import plain_ms


def training_flops_per_token(model):
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.block_size * c.n_embd


def run_e2e(preset_name, kernels, device, limits, train_steps=10):
    rows = []

    def row(what, value, unit, detail):
        rows.append({"kernels": kernels, "preset": preset_name, "what": what, "value": value,
                     "unit": unit, "detail": detail})

    with ops.use_kernels(kernels):
        model, train_step, tokens_per_step = synthetic_training(preset_name, device)
        B, T = tokens_per_step // model.config.block_size, model.config.block_size
        for _ in range(3):  # warm-up: allocator, kernel selection, autotuning
            train_step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with nvtx.range(f"e2e train {kernels}"):
            seconds = plain_ms(train_step, device, train_steps) / 1e3
        tokens_s = B * T / seconds
        mfu = training_flops_per_token(model) * tokens_s / (limits["matmul_tflop_s"] * 1e12)
        detail = f"batch {B} x {T}, {model.num_params() / 1e6:.2f}M params, {seconds * 1e3:.1f} ms/step"
        row("train throughput", tokens_s, "tokens/s", detail)
        row("train MFU", 100 * mfu, "%", f"vs the measured {limits['matmul']} matmul ceiling")
        if device.type == "cuda":
            row("train peak memory", torch.cuda.max_memory_allocated() / 2**20, "MiB", "max_memory_allocated")

        model.eval()
        prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
        new = T - 1  # fill the context exactly: no sliding window in either path

        def decode_cached():
            generate(model, prompt, new, temperature=0)

        def decode_uncached():  # every step re-reads the whole context: O(T^2) work in total
            idx = prompt
            with torch.no_grad():
                for _ in range(new):
                    logits, _ = model(idx)
                    idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)

        for name, fn in (("decode, KV cache", decode_cached), ("decode, no cache", decode_uncached)):
            fn()  # warm-up
            with nvtx.range(f"e2e {name} {kernels}"):
                seconds = plain_ms(fn, device, 3) / 1e3
            row(name, new / seconds, "tokens/s", f"batch 1, {new} tokens after a 1-token prompt, greedy")
    return rows
