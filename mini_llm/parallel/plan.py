"""The planner (`mini-llm parallel plan`): for a model, a number and kind of GPUs and a network,
what each way of splitting the training costs per GPU: memory, bytes sent per step, and a
predicted step time and MFU.

A layout is data parallel of degree d (ddp, zero1, zero2 or fsdp) x tensor parallel t x
pipeline p, d t p = GPUs. What it models is this project's own implementations (parallel/*.py),
so the bytes and the parameter, gradient and optimizer memory it predicts are what the gloo
runs count and hold (tests/test_parallel_plan.py, at 1, 2 and 4 ranks):

  states      4 B parameters + 4 B gradients + 8 B AdamW (m, v) per parameter, and a float32
              step counter per tensor; zero1 shards AdamW's state, zero2 the gradients too,
              fsdp everything (plus the gathered root and one block); tp shards the blocks'
              matrices; pp keeps a stage's layers (the last stage a copy of a tied embedding).
              Measured for tp and pp here; ddp/zero/fsdp's are data_parallel_states.
  activations what the backward needs, per layer and token (formula below), times the
              micro-batches a stage holds at once (GPipe: all M; 1F1B: p - stage).
  bytes       tp: 4 all-reduces of (b, T, C) per layer and micro-batch (forward in the compute
              dtype, backward in float32, the residual stream's); pp: a (b, T, C) float32
              activation forward and its gradient back per micro-batch and stage boundary, and
              the tied embedding's gradient all-reduced between the first and the last stage;
              ddp/zero/fsdp: the formulas of their files, from costs.py.

Time: compute on the roofline, max(flops / peak, bytes moved in memory / bandwidth), with the
pipeline's bubble (p - 1) / M added; each collective by the alpha-beta model (costs.py): on
NVLink inside a node, on the network between nodes; communication is not assumed hidden
behind compute (an upper bound: the real strategies overlap part of it). MFU is the model's
flops (6 N per token + attention) over the step time and the GPUs' peak.
"""

import math
from dataclasses import dataclass, replace

from ..errors import ConfigError
from .costs import all_gather_bytes, all_reduce_bytes, collective_seconds, reduce_scatter_bytes

FP32 = 4
DP_KINDS = ("ddp", "zero1", "zero2", "fsdp")


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer, as the planner counts it. kv_heads < heads: grouped-query
    attention (Llama 3), which this project's GPT does not have (kv_heads == heads)."""

    n_layer: int
    n_embd: int
    n_head: int
    kv_heads: int
    hidden: int  # the MLP's inner width
    vocab: int
    mlp: str = "swiglu"
    tied: bool = False
    bias: bool = False
    norm: str = "rmsnorm"
    pos: str = "rope"
    block_size: int = 8192  # the context a learned position table covers

    @classmethod
    def of(cls, config):
        """The shape of a GPTConfig."""
        return cls(config.n_layer, config.n_embd, config.n_head, config.n_head, config.hidden_width(),
                   config.vocab_size, config.mlp, config.tie_weights, config.bias, config.norm,
                   config.pos, config.block_size)

    def block(self, t=1):
        """(parameters, tensors) of one block on one of t tensor-parallel ranks."""
        C, hs, H = self.n_embd, self.n_embd // self.n_head, self.hidden
        qkv, fc = C + 2 * self.kv_heads * hs, (2 if self.mlp == "swiglu" else 1) * H
        norm_tensors = 2 if self.norm == "layernorm" and self.bias else 1
        split = C * qkv + C * C + C * fc + H * C + (qkv + fc if self.bias else 0)
        whole = 2 * norm_tensors * C + (2 * C if self.bias else 0)  # norms, the c_proj biases
        return split // t + whole, 2 * norm_tensors + 4 + (4 if self.bias else 0)

    def embedding(self):
        learned = self.pos == "learned"
        return self.vocab * self.n_embd + (self.block_size * self.n_embd if learned else 0), 1 + learned

    def head(self):
        """The final norm and, untied, the output matrix."""
        norm_tensors = 2 if self.norm == "layernorm" and self.bias else 1
        return norm_tensors * self.n_embd + (0 if self.tied else self.vocab * self.n_embd), \
            norm_tensors + (0 if self.tied else 1)

    def params(self):
        return self.n_layer * self.block()[0] + self.embedding()[0] + self.head()[0]

    def check(self, t, p):
        if self.n_head % t or self.kv_heads % t or self.hidden % t:
            raise ConfigError(f"tensor parallel {t} does not divide the heads ({self.n_head}, "
                              f"{self.kv_heads} kv) and the MLP width ({self.hidden})")
        if self.n_layer % p:
            raise ConfigError(f"pipeline parallel {p} does not divide the layers ({self.n_layer})")


# Llama 3 (and 3.1) 8B and 70B: https://github.com/meta-llama/llama-models (params.json)
MODELS = {
    "llama3-8b": Shape(32, 4096, 32, 8, 14336, 128256),
    "llama3-70b": Shape(80, 8192, 64, 8, 28672, 128256),
}


@dataclass(frozen=True)
class Gpu:
    name: str
    flops: float  # dense bf16 tensor-core peak, FLOP/s
    memory: float  # bytes
    hbm: float  # memory bandwidth, bytes/s
    nvlink: float  # per GPU, one direction, bytes/s


# Datasheet figures (NVIDIA): H100 SXM5, H200 SXM, A100 SXM4 80 GB.
GPUS = {
    "h100": Gpu("H100 SXM 80GB", 989e12, 80e9, 3.35e12, 450e9),
    "h200": Gpu("H200 SXM 141GB", 989e12, 141e9, 4.8e12, 450e9),
    "a100": Gpu("A100 SXM 80GB", 312e12, 80e9, 2.04e12, 300e9),
}
NVLINK_LATENCY_S = 2e-6  # one hop inside a node, the order NCCL's tests show


@dataclass(frozen=True)
class Network:
    bandwidth: float  # bytes/s per GPU between nodes, one direction
    latency: float  # seconds per hop
    gpus_per_node: int = 8


@dataclass(frozen=True)
class Layout:
    dp: str  # ddp | zero1 | zero2 | fsdp
    d: int
    t: int = 1
    p: int = 1
    schedule: str = "1f1b"

    @property
    def gpus(self):
        return self.d * self.t * self.p

    def __str__(self):
        parts = [f"{self.dp} {self.d}"] * (self.d > 1 or self.gpus == 1) + [f"tp {self.t}"] * (self.t > 1) + \
            [f"pp {self.p} {self.schedule}"] * (self.p > 1)
        return " x ".join(parts)


@dataclass(frozen=True)
class Run:
    """The work of one step: micro-batches of b sequences of T tokens, accum of them per GPU."""

    b: int
    T: int
    accum: int
    act_bytes: int = 2  # the compute dtype's: 2 under bf16 autocast, 4 in float32
    checkpointing: bool = False  # blocks keep their input only and recompute the rest


@dataclass
class RankPlan:
    params: int  # bytes each
    grads: int
    optimizer: int
    activations: int
    bytes_sent: dict  # kind -> bytes sent per step

    @property
    def states(self):
        return self.params + self.grads + self.optimizer

    @property
    def memory(self):
        return self.states + self.activations

    @property
    def sent(self):
        return sum(self.bytes_sent.values())


def stage_params(shape, layout, stage):
    """(parameters, tensors, of which in blocks) held by a rank of pipeline stage `stage`."""
    blocks = shape.n_layer // layout.p
    n, k = (x * blocks for x in shape.block(layout.t))
    in_blocks, first, last = n, stage == 0, stage == layout.p - 1
    if first:
        n, k = n + shape.embedding()[0], k + shape.embedding()[1]
    elif last and shape.tied:  # the last stage's copy of the tied embedding, for the head
        n, k = n + shape.vocab * shape.n_embd, k + 1
    if last:
        n, k = n + shape.head()[0], k + shape.head()[1]
    return n, k, in_blocks


def layer_activation_bytes(shape, run, t):
    """Bytes one block keeps for its backward per token, on one of t tensor-parallel ranks
    (FlashAttention: no T x T matrix). Float32: the residual stream and the norms' inputs.
      attention: ln_1's input, the normed input of c_attn, q k v, the attention's output and
                 the copy c_proj reads;
      MLP:       ln_2's input, c_fc's input, c_fc's output (GELU: its input; SwiGLU: gate and
                 up, silu(gate)) and c_proj's input.
    With activation checkpointing a block keeps its float32 input only."""
    C, hs, H, a = shape.n_embd, shape.n_embd // shape.n_head, shape.hidden, run.act_bytes
    if run.checkpointing:
        return FP32 * C
    qkv = C + 2 * shape.kv_heads * hs
    attention = FP32 * C + a * C + a * (qkv + 2 * C) // t
    mlp_inner = (2 * H if shape.mlp == "gelu" else 4 * H) * a // t
    return attention + FP32 * C + a * C + mlp_inner


def head_activation_bytes(shape, run):
    """Per token, on the last stage: ln_f's input, the head's input, the logits and the
    float32 copy the loss makes of them under autocast."""
    V, C, a = shape.vocab, shape.n_embd, run.act_bytes
    return FP32 * C + a * C + a * V + (FP32 * V if a != FP32 else 0)


def in_flight(layout, run, stage):
    """Micro-batches whose activations a stage holds at once."""
    if layout.p == 1:
        return 1
    return run.accum if layout.schedule == "gpipe" else min(run.accum, layout.p - stage)


def rank_plan(shape, layout, run, stage=0):
    """What one GPU of pipeline stage `stage` holds and sends in one step."""
    shape.check(layout.t, layout.p)
    if not 0 <= stage < layout.p:
        raise ConfigError(f"stage {stage} of a pipeline of {layout.p}")
    n, tensors, in_blocks = stage_params(shape, layout, stage)
    d, P, n_blocks = layout.d, n * FP32, shape.n_layer // layout.p
    params, grads, adam = data_parallel_states(layout.dp, d, P - in_blocks * FP32,
                                               in_blocks * FP32 // n_blocks, n_blocks, tensors)
    tokens = run.b * run.T
    acts = tokens * (shape.n_layer // layout.p) * layer_activation_bytes(shape, run, layout.t)
    if stage == layout.p - 1:
        acts += tokens * head_activation_bytes(shape, run)
    acts *= in_flight(layout, run, stage)
    if run.checkpointing:  # the backward reruns one block's forward: its activations return
        acts += tokens * layer_activation_bytes(shape, replace(run, checkpointing=False), layout.t)
    sent = {}
    if layout.t > 1:
        per_layer = 2 * all_reduce_bytes(tokens * shape.n_embd * run.act_bytes, layout.t) + \
            2 * all_reduce_bytes(tokens * shape.n_embd * FP32, layout.t)
        sent["tp all-reduce"] = per_layer * (shape.n_layer // layout.p) * run.accum
    if layout.p > 1:
        boundaries = (stage < layout.p - 1) + (stage > 0)
        sent["pp send"] = boundaries * run.accum * tokens * shape.n_embd * FP32
        if shape.tied and stage in (0, layout.p - 1):
            sent["pp tied embedding"] = all_reduce_bytes(shape.vocab * shape.n_embd * FP32, 2)
    if d > 1:
        sent[layout.dp] = data_parallel_bytes(layout.dp, P, in_blocks * FP32, d, run.accum)
    return RankPlan(params, grads, adam, acts, sent)


def padded(n_bytes, d):
    """float32 bytes padded up to d equal shards, as flat.py lays a flat buffer out."""
    return math.ceil(n_bytes / (FP32 * d)) * FP32 * d


def data_parallel_states(kind, d, root, block, n_blocks, tensors):
    """(parameter, gradient, AdamW state) bytes one rank holds under `kind` on d ranks, for
    float32 parameters of `root` bytes outside the blocks (embeddings, final norm, head) and
    `block` bytes in each of n_blocks blocks, in `tensors` tensors. The one table of these
    (memory/parallel.py predicts a rank's peak from it); Pp: P padded to d equal shards.

                parameters                   gradients (at the step)   AdamW (m, v; a step each)
      ddp       P                            P                         2 P + the steps
      zero1     Pp + Pp/d                    Pp + Pp/d                 2 Pp/d + 1/d of the steps
      zero2     Pp + Pp/d                    Pp/d                      2 Pp/d + 1/d of the steps
      fsdp      Pp/d + the gathered root     Pp/d                      2 Pp/d + 1/d of the steps
                and the block being run

    ZeRO keeps the full parameters (views into its flat buffer) and its own shard beside them,
    zero1 also the full gradients (a flat buffer, for accumulation) and their shard; fsdp pads
    each unit (the root, each block) on its own. A step counter is 4 bytes per tensor, held by
    the rank whose shard holds a piece of it (about 1/d of them)."""
    P, steps = root + n_blocks * block, FP32 * tensors
    if kind in ("ddp", "ddp-torch"):
        return P, P, 2 * P + steps
    if kind in ("zero1", "zero2"):
        shard = padded(P, d) // d
        grads = shard + (padded(P, d) if kind == "zero1" else 0)
        return padded(P, d) + shard, grads, 2 * shard + steps // d
    shard = (padded(root, d) + n_blocks * padded(block, d)) // d  # fsdp, fsdp-torch
    return shard + padded(root, d) + padded(block, d), shard, 2 * shard + steps // d


def data_parallel_bytes(kind, grads, block_params, d, accum):
    """Bytes one rank sends per step, as ddp.py, zero.py and fsdp.py count them (without their
    padding of flat buffers to d equal shards)."""
    if kind in ("ddp", "zero1"):  # an all-reduce, or a reduce-scatter + an all-gather
        return all_reduce_bytes(grads, d)
    if kind == "zero2":  # a reduce-scatter per micro-batch, an all-gather of the update
        return (accum + 1) * reduce_scatter_bytes(grads, d)
    # fsdp, per micro-batch: everything gathered for the forward, the blocks again for the
    # backward, every gradient reduce-scattered
    return accum * (2 * all_gather_bytes(grads, d) + all_gather_bytes(block_params, d))


def model_flops_per_token(shape, T):
    """6 N for the matmuls' forward and backward (N: every parameter but the embedding lookup;
    a tied head is a matmul) plus the attention's q k^T and p v: 12 L C T, as PaLM and
    torchtitan count MFU (causal masking not subtracted)."""
    lookup = shape.embedding()[0] - (shape.vocab * shape.n_embd if shape.tied else 0)
    return 6 * (shape.params() - lookup) + 12 * shape.n_layer * shape.n_embd * T


def step_seconds(shape, layout, run, gpu, net, plan):
    """{compute, bubble, communication, step} seconds and the MFU of one step of a rank."""
    tokens = run.b * run.T * run.accum * layout.d  # per step, the whole run
    flops = model_flops_per_token(shape, run.T) * tokens / layout.gpus
    if run.checkpointing:  # one more forward of the blocks
        flops *= 1 + 1 / 3 * (shape.n_layer * shape.block()[0]) / shape.params()
    # weights read by each micro-batch's forward and backward; states read and written once
    memory_traffic = 3 * run.accum * plan.params + 2 * plan.states + 2 * plan.activations * run.accum
    compute = max(flops / gpu.flops, memory_traffic / gpu.hbm)
    bubble = compute * (layout.p - 1) / run.accum
    comm = 0.0
    for kind, sent in plan.bytes_sent.items():
        within = {"tp all-reduce": layout.t, "pp send": layout.t * layout.p}.get(kind, layout.gpus)
        node = within <= net.gpus_per_node
        bandwidth, latency = (gpu.nvlink, NVLINK_LATENCY_S) if node else (net.bandwidth, net.latency)
        calls, ranks, op = collective_calls(kind, shape, layout, run)
        comm += collective_seconds(op, sent, ranks, latency, bandwidth) + (calls - 1) * \
            collective_seconds(op, 0, ranks, latency, bandwidth)
    step = compute + bubble + comm
    mfu = model_flops_per_token(shape, run.T) * tokens / (step * layout.gpus * gpu.flops)
    return {"compute": compute, "bubble": bubble, "communication": comm, "step": step, "mfu": mfu}


def collective_calls(kind, shape, layout, run):
    """(calls per step, ranks, collective) behind a line of bytes_sent: each call pays the
    latency of its ring hops once."""
    blocks = shape.n_layer // layout.p
    return {
        "tp all-reduce": (4 * blocks * run.accum, layout.t, "all_reduce"),
        "pp send": (2 * run.accum, 2, "send"),
        "pp tied embedding": (1, 2, "all_reduce"),
        "ddp": (1, layout.d, "all_reduce"),
        "zero1": (2, layout.d, "all_gather"),
        "zero2": (run.accum + 1, layout.d, "all_gather"),
        "fsdp": (run.accum * (3 * blocks + 2), layout.d, "all_gather"),
    }[kind]


def layouts(gpus, shape, net, global_batch, b):
    """Every layout of `gpus` GPUs: tensor parallel inside a node, pipeline stages dividing the
    layers, the data-parallel degree dividing the global batch into micro-batches of b."""
    for t in (1, 2, 4, 8):
        for p in (1, 2, 4, 8, 16):
            if gpus % (t * p) or t > net.gpus_per_node or shape.n_head % t or shape.kv_heads % t \
                    or shape.n_layer % p:
                continue
            d = gpus // (t * p)
            if global_batch % (d * b):
                continue
            for kind in DP_KINDS if d > 1 else ("ddp",):
                yield Layout(kind, d, t, p), global_batch // (d * b)


def plan(shape, gpus, gpu, net, global_batch, b, T, checkpointing=True, act_bytes=2):
    """Rows for every layout: the busiest stage's memory and bytes, the step time and MFU."""
    rows = []
    for layout, accum in layouts(gpus, shape, net, global_batch, b):
        run = Run(b, T, accum, act_bytes, checkpointing)
        stages = [rank_plan(shape, layout, run, s) for s in range(layout.p)]
        worst = max(stages, key=lambda r: r.memory)
        busiest = max(stages, key=lambda r: r.sent)
        timing = step_seconds(shape, layout, run, gpu, net, replace(busiest))
        rows.append({"layout": str(layout), "accum": accum, "memory": worst.memory, "states": worst.states,
                     "activations": worst.activations, "fits": worst.memory <= gpu.memory,
                     "sent": busiest.sent, **timing})
    return sorted(rows, key=lambda r: (not r["fits"], r["step"]))


def size(n):
    """Bytes in the unit that suits them: 1.2 GB, 34.5 MB, 6.7 kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def format_plan(rows, title, limit=None):
    """The rows as a text table: memory and bytes sent per GPU (the busiest pipeline stage),
    then seconds per step: compute, pipeline bubble, communication, in all; and MFU."""
    head = ["layout", "accum", "memory", "states", "activations", "sent/step", "compute s", "bubble s",
            "comm s", "step s", "MFU", "fits"]
    table = [[r["layout"], str(r["accum"]), size(r["memory"]), size(r["states"]), size(r["activations"]),
              size(r["sent"]), *(f"{r[k]:.3g}" for k in ("compute", "bubble", "communication", "step")),
              f"{r['mfu'] * 100:.1f}%", "yes" if r["fits"] else "no"] for r in rows[:limit]]
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
    def line(row):  # the layout left-aligned, the numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([title] + [line(row) for row in [head, *table]])
