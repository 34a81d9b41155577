"""Rollouts: k sampled answers to each of a batch of prompts, with the log-probability the
sampling policy gave each answer token, for reinforcement learning (ppo.py, grpo.py).

Sampling goes through generate() with its KV cache, so on a GPU the decode kernels of the ops
seam serve RL. One generate() call feeds one position offset to every row, so its prompts must
have one length: the prompts are grouped by length, one call per group, every row stopping on
its own at the end-of-turn token.

The result is one right-padded batch (batches.py explains why right padding needs no mask).
Its per-token tensors are (N, T-1), aligned with next-token labels: position t holds what the
model, reading ids[:, :t+1], said about the token ids[:, t+1]. `mask` marks the answer tokens,
the end-of-turn token included (the policy chose to stop), padding and prompt excluded.
"""

from dataclasses import dataclass
from itertools import groupby

import torch

from ..errors import ConfigError, DataError
from ..generate import generate, next_token_logits
from .batches import pad


@dataclass
class Rollout:
    ids: torch.Tensor  # (N, T) prompt + answer, right-padded; rows k*i .. k*i+k-1 answer prompt i
    mask: torch.Tensor  # (N, T-1) bool: the label at t is an answer token
    logprobs: torch.Tensor  # (N, T-1) float32: the sampling policy's log-prob of that token; 0 off the mask
    prompt_lengths: list  # (N,)
    answers: list  # (N,) the answer's ids, with the end-of-turn token if the model stopped
    stopped: list  # (N,) bool: the model ended its turn within the context

    @property
    def lengths(self):
        """(N,) real tokens per row."""
        return torch.tensor([p + len(a) for p, a in zip(self.prompt_lengths, self.answers)])


def check_prompts(prompts, k, block_size):
    if not prompts:
        raise ConfigError("the prompt set is empty: RL needs at least one prompt")
    if k < 1:
        raise ConfigError(f"answers per prompt must be >= 1, got {k}")
    for i, p in enumerate(prompts):
        if not 0 < len(p) < block_size:
            raise DataError(f"prompt {i} has {len(p)} tokens: it needs 1 to {block_size - 1} "
                            f"to leave room for an answer in the context of {block_size}")


@torch.no_grad()
def rollout(policy, prompts, k, max_new_tokens, stop_token, generator=None, temperature=1.0):
    """k answers to each prompt (lists of token ids), each at most max_new_tokens long and
    never past the context. Returns a Rollout. The policy samples in eval mode (no dropout),
    so its log-probs are those a forward in eval mode gives."""
    block = policy.config.block_size
    check_prompts(prompts, k, block)
    device = policy.wte.weight.device
    sampled = {}  # (prompt i, answer j) -> (answer ids, their log-probs, stopped)
    was_training = policy.training
    policy.eval()
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for length, group in groupby(by_length, key=lambda i: len(prompts[i])):
        group = list(group)
        idx = torch.tensor([prompts[i] for i in group for _ in range(k)], device=device)  # (len(group) * k, length)
        out, logps = generate(policy, idx, min(max_new_tokens, block - length), temperature,
                              generator=generator, stop_token=stop_token, logprobs=True)
        for row, (new, logp) in enumerate(zip(out[:, length:].tolist(), logps.cpu())):
            ends = stop_token in new
            n = new.index(stop_token) + 1 if ends else len(new)
            sampled[group[row // k], row % k] = (new[:n], logp[:n], ends)
    policy.train(was_training)
    return assemble(prompts, k, [sampled[i, j] for i in range(len(prompts)) for j in range(k)])


def assemble(prompts, k, rows):
    """One right-padded batch from rows (answer ids, log-probs, stopped) in prompt order."""
    prompt_of = [prompts[r // k] for r in range(len(rows))]
    ids, _ = pad([p + a for p, (a, _, _) in zip(prompt_of, rows)])
    mask = torch.zeros(ids.size(0), ids.size(1) - 1, dtype=torch.bool)
    logprobs = torch.zeros(mask.shape)
    for r, (p, (a, logp, _)) in enumerate(zip(prompt_of, rows)):
        mask[r, len(p) - 1: len(p) - 1 + len(a)] = True
        logprobs[r, len(p) - 1: len(p) - 1 + len(a)] = logp
    return Rollout(ids, mask, logprobs, [len(p) for p in prompt_of], [a for a, _, _ in rows],
                   [s for _, _, s in rows])


def next_token_logprobs(logits, temperature=1.0):
    """(N, T-1, V): at each position but the last, the log-probs of the next token under the
    distribution rollout() samples from; logits (N, T, V) of the model reading ids (N, T)."""
    flat = next_token_logits(logits[:, :-1].reshape(-1, logits.size(-1)), temperature)
    return torch.log_softmax(flat, dim=-1).view(logits.size(0), -1, logits.size(-1))


def picked(logp, ids):
    """(N, T-1): the log-prob each next token of ids (N, T) got, from next_token_logprobs."""
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits, ids, temperature=1.0):
    """(N, T-1) log-prob of each next token of ids (N, T)."""
    return picked(next_token_logprobs(logits, temperature), ids)


def entropy(logp):
    """(N, T-1) entropy of each next-token distribution, in nats, from next_token_logprobs."""
    return -(logp.exp() * logp).sum(-1)
