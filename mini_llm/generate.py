"""Autoregressive sampling with a static, pre-allocated KV cache.

The prompt is encoded once (prefill); each later step feeds only the newest token, whose
keys and values are written into the cache in place, so a step costs O(T) rather than O(T^2)
and allocates nothing that grows.

Sliding window: the model has learned `block_size` positions and no more. When the cache is
full, the newest block_size // 2 tokens are re-encoded from position 0 and sampling goes on,
so any number of tokens can be generated; each token then sees at least block_size // 2 and
at most block_size tokens of context. A prompt longer than block_size keeps only its end.
"""

import torch

from . import nvtx
from .errors import ConfigError, DataError, DivergedError


def default_prompt(tokenizer):
    """Where a sample starts when the user gave no prompt: a newline, or, for a vocabulary
    without one, its first token."""
    try:
        return tokenizer.encode("\n")
    except DataError:
        return [0]


def next_token_logits(logits, temperature=1.0, top_k=None):
    """The logits (B, V) of the distribution a token is drawn from: scaled by 1 / temperature,
    all but the top_k set to -inf. Not for temperature 0 (greedy has no distribution)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """Draw one token per row from logits (B, V); temperature 0 means greedy. Returns (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(next_token_logits(logits, temperature, top_k), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None,
             stop_token=None, logprobs=False):
    """idx: (B, T) prompt ids. Returns (B, T + max_new_tokens), or with `stop_token` (e.g. a
    chat's end of turn) (B, T + n): each row stops at its first stop_token and is padded with
    it from there, and generation ends early once every row has stopped.

    logprobs=True also returns (B, n) float32: each new token's log-probability under the
    distribution it was drawn from (next_token_logits), what reinforcement learning needs
    (align/rollout.py); 0 for a stopped row's padding."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ConfigError(f"the prompt must be (batch, length >= 1) token ids, got {tuple(idx.shape)}")
    if not temperature >= 0:  # also refuses NaN
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if logprobs and temperature == 0:
        raise ConfigError("log-probabilities need temperature > 0 (greedy decoding has no distribution)")
    if max_new_tokens < 0:
        raise ConfigError(f"the number of new tokens must be >= 0, got {max_new_tokens}")
    block = model.config.block_size
    cache = model.new_cache(idx.size(0))
    window = idx[:, -block:]
    with nvtx.range("prefill"):
        logits, _ = model(window, cache=cache, start=0)
    # Checked once, here, not per token (that would wait for the device at every step):
    # broken weights, e.g. a diverged run's checkpoint, already give non-finite prefill logits.
    if not torch.isfinite(logits[:, -1]).all():
        raise DivergedError("the model's logits are not finite (NaN or inf): its weights are "
                            "broken, e.g. saved by a run that diverged")
    pos = window.size(1)  # positions filled in the cache
    tokens, token_logps = [idx], []
    stopped = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        next_id = sample_next(logits[:, -1], temperature, top_k, generator)  # (B, 1)
        if logprobs:
            logp = torch.log_softmax(next_token_logits(logits[:, -1], temperature, top_k), dim=-1)
            token_logps.append(logp.gather(-1, next_id).masked_fill(stopped, 0.0))
        if stop_token is not None:
            next_id = next_id.masked_fill(stopped, stop_token)
            stopped |= next_id == stop_token
        tokens.append(next_id)
        if step == max_new_tokens - 1 or (stop_token is not None and bool(stopped.all())):
            break
        if pos < block:
            with nvtx.range("decode"):
                logits, _ = model(next_id, cache=cache, start=pos)
            pos += 1
        else:  # window full: slide it (the last `block` pieces hold at least `block` tokens)
            window = torch.cat(tokens[-block:], dim=1)[:, -max(1, block // 2):]
            with nvtx.range("prefill"):
                logits, _ = model(window, cache=cache, start=0)
            pos = window.size(1)
    out = torch.cat(tokens, dim=1)
    if logprobs:
        return out, (torch.cat(token_logps, dim=1) if token_logps else out.new_zeros(out.size(0), 0, dtype=torch.float32))
    return out
