"""The reference decoder-only transformer.

One config covers two block families:
  GPT-2 style : LayerNorm, GELU MLP, learned positions, biases   (norm="layernorm", mlp="gelu",
                pos="learned", bias=True)
  Llama style : RMSNorm, SwiGLU MLP, rotary positions, no biases (norm="rmsnorm", mlp="swiglu",
                pos="rope", bias=False)
Norms, attention, activations and the loss go through the ops seam (mini_llm.ops), so
`--kernels` swaps their implementation without touching this file.

Shapes: B batch, T sequence, C = n_embd, nh = n_head, hs = C // nh, V = vocab_size.
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import nvtx, ops
from .errors import ConfigError
from .rope import apply_rope, rope_tables

DECODE_MAX_TOKENS = 16  # at most this many new positions go through decode_attention
CHOICES = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"), "pos": ("learned", "rope")}


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # longest context the model is trained for
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False
    norm: str = "layernorm"
    mlp: str = "gelu"
    pos: str = "learned"
    tie_weights: bool = True  # the output projection reuses the token embedding matrix
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    mlp_hidden: int | None = None  # the MLP's inner width; None: see hidden_width()

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"rope needs an even head size, got {self.n_embd // self.n_head}")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 1):
            raise ConfigError(f"mlp_hidden must be a positive integer, got {self.mlp_hidden!r}")
        for name in ("norm_eps", "rope_base"):  # also refuses NaN
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    to_dict = asdict

    def hidden_width(self):
        """The MLP's inner width: mlp_hidden if set, else 4C for GELU, and for SwiGLU two thirds
        of that rounded up to a multiple of 64 (its three matrices then hold about as many
        parameters as GELU's two)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 4 * self.n_embd if self.mlp == "gelu" else 64 * math.ceil(8 * self.n_embd / 3 / 64)


class Norm(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind, self.eps = config.norm, config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        with_bias = config.bias and config.norm == "layernorm"
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if with_bias else None

    def forward(self, x):
        if self.kind == "layernorm":
            return ops.layer_norm(x, self.weight, self.bias, self.eps)
        return ops.rms_norm(x, self.weight, self.eps)

    def add_norm(self, x, delta):
        """(x + delta, norm(x + delta)) in one pass over memory: the residual add fused."""
        if self.kind == "layernorm":
            return ops.add_layer_norm(x, delta, self.weight, self.bias, self.eps)
        return ops.add_rms_norm(x, delta, self.weight, self.eps)


class KVCache:
    """Keys and values of every layer, allocated once for `max_len` positions.

    Generation writes each new position in place, so no step allocates or copies the past.
    The first keys written decide the dtype (bf16 under autocast), so attention always gets
    keys and values in the dtype of its queries.
    """

    def __init__(self, config, batch_size, max_len, device):
        hs = config.n_embd // config.n_head
        self.shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.device, self.max_len = device, max_len
        self.k = self.v = None
        self._lengths, self._lengths_end = None, None

    def update(self, layer, start, k, v):
        """Store k, v (B, nh, T, hs) at positions start..start+T-1; return every key and
        value so far, (B, nh, start+T, hs)."""
        end = start + k.size(2)
        if end > self.max_len:
            raise ValueError(f"positions {start}..{end - 1} do not fit a cache of {self.max_len}")
        if self.k is None:  # the heads as k has them: a tensor-parallel rank holds some
            self.shape = self.shape[:2] + (k.size(1),) + self.shape[3:]
            self.k = torch.zeros(self.shape, device=self.device, dtype=k.dtype)
            self.v = torch.zeros_like(self.k)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def lengths(self, end):
        """(B,) int32, every sequence filled up to `end`: what decode_attention reads. Made
        once per position, not once per layer."""
        if self._lengths is None or self._lengths_end != end:
            self._lengths = torch.full(self.shape[1:2], end, dtype=torch.int32, device=self.device)
            self._lengths_end = end
        return self._lengths


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer, self.n_head, self.pos = layer, config.n_head, config.pos
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache=None, start=0):
        B, T, _ = x.shape
        # Widths from the weights, not the config: under tensor parallelism (parallel/tp.py)
        # c_attn holds this rank's heads only and n_head counts them.
        q, k, v = self.c_attn(x).chunk(3, dim=2)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        if rope is not None:  # (B, nh, T, hs), rotated by position
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)  # (B, nh, start+T, hs)
        if cache is not None and start > 0 and T <= DECODE_MAX_TOKENS:
            # A few new tokens against the cache: a kernel that reads the cache in place,
            # split along its length so even one sequence fills the GPU.
            lengths = cache.lengths(start + T)  # (B,)
            y = ops.decode_attention(q, cache.k[self.layer], cache.v[self.layer], lengths, longest=start + T)
        else:
            y = ops.attention(q, k, v, causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, H, self.kind = config.n_embd, config.hidden_width(), config.mlp
        fc_out = H if self.kind == "gelu" else 2 * H  # SwiGLU: gate and up, fused
        self.c_fc = nn.Linear(C, fc_out, bias=config.bias)
        self.c_proj = nn.Linear(H, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.kind == "gelu":
            h = ops.gelu(self.c_fc(x))
        else:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            h = ops.silu(gate) * up
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = Norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = Norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, start=0):
        with nvtx.range(f"layer {self.attn.layer}"):
            x, h = self.ln_2.add_norm(x, self.attn(self.ln_1(x), rope, cache, start))
            return x + self.mlp(h)  # x + attn(ln_1(x)) + mlp(ln_2(x + attn(ln_1(x))))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = Norm(config)
        self.lm_head = (
            None if config.tie_weights else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        )
        # Activation checkpointing: in training, each block keeps only its input and recomputes
        # its inside during backward (less memory for one more forward). A way to run, not part
        # of the model, so it lives outside GPTConfig and checkpoints.
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 L), so
        # its variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Parameter count; by default without position embeddings, as nanoGPT reports it."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n

    def forward(self, idx, targets=None, cache=None, start=0):
        """idx: (B, T) token ids at positions start..start+T-1. Returns (logits (B, T, V),
        loss or None). With a KVCache, keys and values of earlier positions come from it."""
        x, rope = self.embed(idx, start)
        return self.head(self.blocks(x, rope, cache, start), targets)

    def features(self, idx, cache=None, start=0):
        """The last layer's normalized output (B, T, C), before the output projection: what
        a reward model's scalar head reads."""
        x, rope = self.embed(idx, start)
        return self.ln_f(self.blocks(x, rope, cache, start))

    # The three parts of the forward, apart so a pipeline stage (parallel/pp.py) runs its own.
    def embed(self, idx, start=0):
        """(B, T) token ids -> the residual stream (B, T, C) and the rotary tables (or None)."""
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed the context of {self.config.block_size}"
            )
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        return self.drop(x), self.rope(T, start, idx.device)

    def rope(self, T, start=0, device=None):
        """The rotary tables of positions start..start+T-1; None with learned positions."""
        if self.config.pos != "rope":
            return None
        pos = torch.arange(start, start + T, device=device)
        return rope_tables(self.config.n_embd // self.config.n_head, pos, self.config.rope_base)

    def blocks(self, x, rope, cache=None, start=0):
        for block in self.h:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, cache, start, use_reentrant=False)
            else:
                x = block(x, rope, cache, start)
        return x

    def head(self, x, targets=None):
        """The final norm, the logits and, given targets, the loss."""
        x = self.ln_f(x)
        head = self.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = x @ head.t()  # (B, T, V)
        loss = None if targets is None else ops.cross_entropy(logits, targets, ignore_index=-1)
        return logits, loss

    def new_cache(self, batch_size, max_len=None):
        max_len = self.config.block_size if max_len is None else max_len
        return KVCache(self.config, batch_size, max_len, self.wte.weight.device)

    def param_groups(self, weight_decay):
        """Decay matrices and embeddings; never norms or biases (1-D parameters)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
