"""The bridge to stage 2: one GPT-2 transformer block written with the tensor engine.

The same computation as model.Block for the GPT-2 family (LayerNorm with biases, GELU MLP,
no dropout), with the same parameter names, so `block.load_state(...)` takes the PyTorch
block's weights and tests/test_scratch_block.py can check that the output and every gradient
agree. Nothing here has a hand-written backward except what functional.py provides (softmax,
layer norm, GELU): the gradients of attention, the residuals and the head split all come from
the engine applying the chain rule through matmuls, reshapes and transposes.

Shapes: B batch, T sequence, C = n_embd, nh = n_head, hs = C // nh.
"""

import math

import numpy as np

from ..errors import ConfigError
from . import functional as F
from .nn import MLP, LayerNorm, Linear, Module
from .tensor import Tensor


class CausalSelfAttention(Module):
    def __init__(self, config, rng, dtype):
        C = config.n_embd
        self.n_head = config.n_head
        self.c_attn = Linear(C, 3 * C, config.bias, rng, dtype)  # q, k and v in one product
        self.c_proj = Linear(C, C, config.bias, rng, dtype)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C)
        # Slice q, k, v, split C into nh heads, heads before positions: (B, nh, T, hs) each.
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
                   for i in range(3))
        scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
        # Position t may look at keys 0..t only: -inf above the diagonal becomes weight 0 in
        # the softmax, and so gradient 0 too.
        future = np.triu(np.full((T, T), -np.inf, dtype=x.dtype), k=1)
        weights = F.softmax(scores + Tensor(future), axis=-1)  # (B, nh, T, T), rows sum to 1
        y = weights @ v  # (B, nh, T, hs)
        return self.c_proj(y.transpose(0, 2, 1, 3).reshape(B, T, C))  # heads side by side again


class Block(Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(of that)): the pre-norm residual block of GPT-2."""

    def __init__(self, config, rng=None, dtype=np.float64):
        gpt2 = {"norm": "layernorm", "mlp": "gelu", "pos": "learned"}
        for name, wanted in gpt2.items():
            if getattr(config, name) != wanted:
                raise ConfigError(f"the scratch block is GPT-2's: {name} must be {wanted!r}, "
                                  f"got {getattr(config, name)!r}")
        if config.dropout:
            raise ConfigError(f"the scratch block has no dropout; got dropout={config.dropout}")
        rng = rng or np.random.default_rng(0)
        C = config.n_embd
        self.ln_1 = LayerNorm(C, config.bias, config.norm_eps, dtype)
        self.attn = CausalSelfAttention(config, rng, dtype)
        self.ln_2 = LayerNorm(C, config.bias, config.norm_eps, dtype)
        self.mlp = MLP(C, 4 * C, C, "gelu", config.bias, rng, dtype)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln_1(x))  # the residual: the block adds to x, never replaces it
        return x + self.mlp(self.ln_2(x))
