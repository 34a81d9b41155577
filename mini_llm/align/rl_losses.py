"""The reinforcement-learning objectives, one function each, with the metrics TRL logs.

Shapes: N sampled answers, T-1 label positions (rollout.py). Per-token tensors are (N, T-1)
and `mask` (N, T-1) marks the answer tokens; every mean over tokens is a masked mean, so
padding and prompt never count. Log-probs are per token: logp under the policy being trained,
old_logp under the policy that sampled (the rollout's), ref_logp under the frozen reference.
"""

import torch

from ..errors import ConfigError


def masked_mean(x, mask, dim=None):
    """The mean of x where mask is True (over `dim`, or all of it)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x, mask, eps=1e-8):
    """x shifted and scaled to mean 0 and standard deviation 1 over the masked entries; 0 off
    the mask (PPO normalises its advantages this way, per rollout)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return ((x - mean) * torch.rsqrt(var + eps)) * mask


def kl_penalty(logp, ref_logp, kind="k1"):
    """Per-token estimate of KL(policy || reference) from tokens the policy sampled
    (Schulman, "Approximating KL divergence", 2020). k1 = log pi - log pi_ref: unbiased, can be
    negative; its sum over an answer is the sequence log-ratio. k3 = r - log r - 1 with
    r = pi_ref / pi: unbiased too, never negative, lower variance (GRPO's choice)."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1
    raise ConfigError(f"the KL estimator must be k1 or k3, got {kind!r}")


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalized advantage estimation (Schulman et al. 2016) over each answer's tokens.

    rewards, values (N, T-1): per-token reward (PPO: the KL penalty on every token, the score
    added on the last) and the value model's estimate before each token. Going backwards,
    delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last token) and
    A_t = delta_t + gamma lam A_{t+1}. Returns (advantages, returns = advantages + values),
    0 off the mask."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = m * (delta + gamma * lam * next_advantage)
        next_value = m * values[:, t]  # 0 past an answer's end: the episode is over
        next_advantage = advantages[:, t]
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logp, old_logp, advantages, mask, clip=0.2):
    """PPO's clipped surrogate, per token: max(-A r, -A clip(r, 1-eps, 1+eps)) with
    r = pi / pi_old. Returns the per-token loss (N, T-1) (the caller chooses how to average
    it) and metrics: clip_ratio (share of tokens clipped), approx_kl (k3 between old and new)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = torch.maximum(unclipped, clipped)
    metrics = {"clip_ratio": masked_mean((clipped > unclipped).float(), mask),
               "approx_kl": masked_mean(torch.exp(-log_ratio) + log_ratio - 1, mask).detach(),
               "ratio": masked_mean(ratio, mask).detach()}
    return loss, metrics


def clipped_value_loss(values, old_values, returns, mask, clip=0.2):
    """PPO's value loss: 0.5 max((V - R)^2, (V_clipped - R)^2), V_clipped kept within clip of
    the rollout's values, a masked mean. Returns (loss, metrics)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    return loss, {"value_clip_ratio": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask)}


def explained_variance(values, returns, mask):
    """1 - Var(R - V) / Var(R) over the answer tokens: 1 for a perfect value model, 0 for one
    that predicts the mean, negative for worse."""
    var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    return 1 - masked_mean((residual - masked_mean(residual, mask)) ** 2, mask) / var.clamp(min=1e-8)


def group_advantages(rewards, k, scale=True, eps=1e-4):
    """GRPO's advantage of each answer: its reward minus the mean of its prompt's k answers,
    divided by their standard deviation when `scale` (Dr. GRPO leaves it out: the division
    weights prompts that are almost always right, or wrong, most). rewards (N,), N = prompts x k,
    each prompt's answers adjacent; a NaN reward (skipped answer) gets advantage 0 and counts
    in neither its group's mean nor its std. Returns (N,) and frac_reward_zero_std, the share of
    groups whose answers all scored the same (no signal: their advantages are 0)."""
    if k < 2:
        raise ConfigError(f"GRPO needs at least 2 answers per prompt to compare, got k={k}")
    groups = rewards.view(-1, k)
    valid = ~groups.isnan()
    count = valid.sum(1, keepdim=True)
    x = groups.nan_to_num(0.0)
    mean = x.sum(1, keepdim=True) / count.clamp(min=1)
    centred = (x - mean) * valid
    std = ((centred ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # unbiased, as torch.std
    advantages = centred / (std + eps) if scale else centred
    return advantages.reshape(-1), (std.squeeze(1) < 1e-8).float().mean()


LOSS_NORMS = ("sequence", "token", "dr_grpo")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip=0.2, beta=0.0, norm="sequence", max_tokens=None):
    """GRPO's objective (Shao et al. 2024): the clipped surrogate with each answer's advantage
    (N,) on all of its tokens, plus beta times the k3 KL to the reference (ref_logp may be None
    when beta is 0). How the per-token terms become one number:
      sequence: the mean over each answer's tokens, then over answers (the paper's);
      token:    the mean over all tokens of the batch (DAPO: long answers not down-weighted);
      dr_grpo:  the sum over tokens divided by N * max_tokens, a constant (Dr. GRPO: no length bias).
    Returns (loss, metrics)."""
    per_token, metrics = clipped_policy_loss(logp, old_logp, advantages.unsqueeze(1), mask, clip)
    if beta:
        kl = kl_penalty(logp, ref_logp, "k3")
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, mask).detach()
    if norm == "sequence":
        loss = masked_mean(per_token, mask, dim=1).mean()
    elif norm == "token":
        loss = masked_mean(per_token, mask)
    elif norm == "dr_grpo":
        loss = (per_token * mask).sum() / (mask.size(0) * (max_tokens or mask.size(1)))
    else:
        raise ConfigError(f"the loss normalisation must be one of {LOSS_NORMS}, got {norm!r}")
    return loss, metrics
