"""`mini-llm costs`: what a model costs, from its shape: parameters, FLOPs, memory, KV cache,
arithmetic intensity, and a step time predicted from a device's measured ceilings.

Notation: L layers, C = n_embd (= n_head * head size: every head has its own keys and values),
V vocabulary, T the context (block_size), B the batch.

FLOPs (a multiply-add is 2 FLOPs; norms, activations, softmax and the optimizer are left out:
a few per element, small beside the matmuls):
  forward, per token    2 N_mm + 4 L T C
      N_mm: the weights of every matmul: attention and MLP projections and the head (V x C,
      counted even when it is tied to the embedding: the lookup is free, the head's matmul is
      not; biases are adds, not counted). 4 L T C: per layer, q.k against T keys and the
      weighted sum of T values, 2 T C each. Counted over the full T x T square, as PaLM
      (appendix B) and nanoGPT's MFU do; a causal kernel that skips the masked half does half
      of it. Kaplan et al. (2020, table 1) write 2N + 2 L T C: their N leaves out the head, and
      their attention term is one of the two T x C products per layer.
  training, per token   3 x forward = 6 N_mm + 12 L T C (the backward is two matmuls per forward
      one: gradients of the inputs and of the weights). Activation checkpointing adds a forward.
  prefill, per token    the forward over a T-token prompt (this model makes logits at every
      position).
  decode, per token     2 N_mm + 4 L t C at context t: one query against t cached keys and values,
      exact (nothing is masked).
"""

from dataclasses import dataclass

import torch

from ..memory import predict_training_memory
from ..model import GPT

BYTES = {"float32": 4, "bfloat16": 2}
PARTS = ("embeddings", "attention", "MLP", "norms", "head")

# Bytes per parameter while training: (recipe, weights, gradients, optimizer state).
TRAINING_RECIPES = [
    ("fp32 weights, AdamW (float32 training here)", 4, 4, 8),
    ("bf16 autocast, fp32 weights, AdamW (GPU training here)", 4, 4, 8),
    ("bf16 weights and grads, fp32 master + AdamW (ZeRO's mixed precision)", 2, 2, 12),
    ("bf16 weights, grads and AdamW state", 2, 2, 4),
    ("fp32 SGD with momentum", 4, 4, 4),
]
# Bytes per parameter of the weights alone, for inference: int8 keeps a float16 scale per output
# row, int4 one per group of 64 weights (mini_llm/ops/quant_format.py).
INFERENCE_WEIGHTS = [("float32", 4.0), ("bfloat16", 2.0), ("int8 (+ a scale per row)", 1.0),
                     ("int4, group 64", 0.5 + 2 / 64)]
# Memory traffic of one training step per parameter, float32: the forward and the backward read
# each weight, the backward writes its gradient, AdamW reads p, g, m, v and writes p, m, v.
TRAINING_BYTES_PER_PARAM = 4 * (1 + 2 + 7)


def _part(name):
    if name.startswith(("wte.", "wpe.")):
        return "embeddings"
    if name.startswith("lm_head."):
        return "head"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "MLP"
    return "norms"  # h.i.ln_1, h.i.ln_2, ln_f


@dataclass
class Costs:
    config: object
    batch_size: int
    dtype: str  # of the matmuls: float32, or bfloat16 (autocast)
    params: dict  # part -> count; a tied head counts 0 here (it is the token embedding)
    matmul_params: int  # N_mm: every matmul's weights, the head included even when tied
    activation_bytes: int | None  # what one training step saves for its backward (mini_llm.memory)

    @property
    def total(self):
        return sum(self.params.values())

    @property
    def non_embedding(self):
        """Kaplan et al.'s N: without the embeddings and the (tied or not) head."""
        return self.params["attention"] + self.params["MLP"] + self.params["norms"]

    def attention_flops(self, context):
        c = self.config
        return 4 * c.n_layer * context * c.n_embd

    def forward_flops(self, context):
        return 2 * self.matmul_params + self.attention_flops(context)

    def training_flops(self):
        return 3 * self.forward_flops(self.config.block_size)

    def kv_bytes_per_token(self):
        return 2 * self.config.n_layer * self.config.n_embd * BYTES[self.dtype]  # k and v

    def prefill(self, batch=1):
        """(FLOPs, bytes) of a full-context prompt: weights read once, the KV cache written."""
        T = self.config.block_size
        flops = batch * T * self.forward_flops(T)
        return flops, self.total * BYTES[self.dtype] + batch * T * self.kv_bytes_per_token()

    def decode(self, batch=1):
        """(FLOPs, bytes) of one new token per sequence at the full context: every weight and
        the whole KV cache are read for it."""
        T = self.config.block_size
        flops = batch * self.forward_flops(T)
        return flops, self.total * BYTES[self.dtype] + batch * T * self.kv_bytes_per_token()

    def training_step(self):
        """(FLOPs, bytes) of one step: parameter traffic, and activations written in the forward
        and read back in the backward (a floor: temporaries and the logits are left out)."""
        tokens = self.batch_size * self.config.block_size
        moved = self.total * TRAINING_BYTES_PER_PARAM + 2 * self.activation_bytes
        return tokens * self.training_flops(), moved


def model_costs(config, batch_size, dtype="float32", device="cpu", activations=True):
    """The costs of `config` trained at `batch_size` x block_size tokens per step; dtype of the
    matmuls ("float32", or "bfloat16" for autocast), device "cpu" or "cuda" (for the
    activations' size). activations=False skips the memory walk (activation_bytes None) when
    only parameters and FLOPs are wanted: it is the slow part."""
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(config)
    params = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():  # a tied head is the same tensor: listed once
        params[_part(name)] += p.numel()
    matmul = sum(p.numel() for name, p in model.named_parameters()
                 if p.dim() == 2 and _part(name) in ("attention", "MLP", "head"))
    if config.tie_weights:
        matmul += model.wte.weight.numel()
    saved = None
    if activations:
        memory = predict_training_memory(config, batch_size, dtype=dtype, device=device)
        saved = sum(n for _, n in memory.activations)
    return Costs(config, batch_size, dtype, params, matmul, saved)


def roofline_seconds(flops, n_bytes, ceilings):
    """The least time flops and n_bytes can take on a device: whichever ceiling binds."""
    compute = flops / (ceilings["matmul_tflop_s"] * 1e12)
    memory = n_bytes / (ceilings["copy_gb_s"] * 1e9)
    return max(compute, memory), "compute" if compute >= memory else "memory"


def _si(x, unit=""):
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _parameter_lines(k):
    c = k.config
    pos = f" + positions {c.block_size}x{c.n_embd}" if c.pos == "learned" else ""
    notes = {"embeddings": f"token {c.vocab_size}x{c.n_embd}{pos}",
             "head": "tied: the token embedding" if c.tie_weights else f"{c.vocab_size}x{c.n_embd}"}
    lines = ["parameters"]
    lines += [f"  {part:<11}{n:>14,}   {notes.get(part, '')}" for part, n in k.params.items()]
    lines.append(f"  {'total':<11}{k.total:>14,}   non-embedding (Kaplan's N): {k.non_embedding:,}; "
                 f"matmul weights N_mm: {k.matmul_params:,}")
    return lines


def _flops_lines(k):
    c, T = k.config, k.config.block_size
    attn = k.attention_flops(T)
    return [
        "FLOPs per token (multiply-add = 2; attention over the full T x T square)",
        f"  training  6 N_mm + 12 L T C = 6 x {k.matmul_params:,} + 12 x {c.n_layer} x {T} x "
        f"{c.n_embd} = {_si(k.training_flops(), 'FLOP')}  (attention {3 * attn / k.training_flops():.1%}; "
        f"a causal kernel skips half of it)",
        f"  prefill   2 N_mm + 4 L T C = {_si(k.forward_flops(T), 'FLOP')}, for each of T = {T} prompt tokens",
        f"  decode    2 N_mm + 4 L t C = {_si(k.forward_flops(T), 'FLOP')} at t = {T} "
        f"({_si(k.forward_flops(1), 'FLOP')} at t = 1)",
    ]


def _memory_lines(k):
    lines = ["memory per parameter (training: weights + gradients + optimizer state; "
             "activations: `mini-llm memory`; 1 MB = 1e6 B)"]
    for recipe, w, g, o in TRAINING_RECIPES:
        lines.append(f"  {recipe:<70}{w + g + o:>3} B  {_si(k.total * (w + g + o), 'B'):>9}")
    lines.append("  inference weights: " + ", ".join(
        f"{name} {b:.3g} B ({_si(k.total * b, 'B')})" for name, b in INFERENCE_WEIGHTS))
    c = k.config
    lines.append(f"KV cache: 2 L C x {BYTES[k.dtype]} B = {k.kv_bytes_per_token():,} B per token "
                 f"({k.dtype}); {_si(c.block_size * k.kv_bytes_per_token(), 'B')} per sequence of "
                 f"{c.block_size}")
    return lines


def _time_lines(k, ceilings, measured_ms):
    ridge = ceilings["matmul_tflop_s"] * 1e12 / (ceilings["copy_gb_s"] * 1e9)
    lines = [f"on {ceilings['device']}: copy {ceilings['copy_gb_s']:.1f} GB/s, matmul "
             f"{ceilings['matmul_tflop_s']:.3g} TFLOP/s ({ceilings['source']}); ridge point "
             f"{ridge:.0f} FLOP/B: below it memory-bound"]
    T = k.config.block_size
    rows = [("training step", f"batch {k.batch_size} x {T}", k.training_step()),
            ("prefill", f"1 x {T} tokens", k.prefill()),
            ("decode", f"1 token at t = {T}", k.decode())]
    for name, shape, (flops, n_bytes) in rows:
        seconds, bound = roofline_seconds(flops, n_bytes, ceilings)
        lines.append(f"  {name:<14}{shape:<22}{_si(flops, 'FLOP'):>11} {_si(n_bytes, 'B'):>9}  "
                     f"{flops / n_bytes:>7.1f} FLOP/B  predicted {seconds * 1e3:9.3f} ms "
                     f"({bound}-bound)")
    if measured_ms is not None:
        predicted = roofline_seconds(*k.training_step(), ceilings)[0] * 1e3
        lines.append(f"  training step measured {measured_ms:.3f} ms: predicted / measured "
                     f"{predicted / measured_ms:.3g} (the share of the ceilings reached)")
    return lines


def format_costs(k, ceilings=None, measured_ms=None):
    """The costs as text; with `ceilings` ({device, copy_gb_s, matmul_tflop_s, source}) the
    arithmetic intensities and predicted times, with `measured_ms` the measured step beside."""
    c = k.config
    head = (f"{c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, context {c.block_size}, "
            f"vocabulary {c.vocab_size} ({c.norm}, {c.mlp}, {c.pos} positions, "
            f"{'tied' if c.tie_weights else 'untied'} head), matmuls in {k.dtype}")
    sections = [[head], _parameter_lines(k), _flops_lines(k), _memory_lines(k)]
    if ceilings is not None:
        sections.append(_time_lines(k, ceilings, measured_ms))
    return "\n\n".join("\n".join(lines) for lines in sections)
