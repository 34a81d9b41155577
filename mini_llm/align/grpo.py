"""GRPO (Shao et al. 2024, DeepSeekMath): `mini-llm align grpo --base SFT_RUN --prompts F --reward R`.

No value model: each prompt gets k answers, and an answer's advantage is how much better it
scored than its siblings (rl_losses.group_advantages), the same on all of its tokens. The loss
is PPO's clipped surrogate with that advantage, plus beta (--kl-coef) x the k3 KL to the frozen
reference (0 skips the reference altogether, as Dr. GRPO and DAPO do).

--dr-grpo (Liu et al. 2025, "Understanding R1-Zero-like training") removes two biases: the
division by the group's std (--no-scale-rewards) and the per-answer length normalisation
(--loss-norm dr_grpo: a constant divisor instead).
"""

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..loop import seeded
from .rl import (RLConfig, as_metrics, pick_prompts, reference_logprobs, rollout_stats, scored_rollout, setting,
                 train_rl)
from .rl_losses import LOSS_NORMS, group_advantages, grpo_loss, masked_mean
from .rollout import entropy, next_token_logprobs, picked


@dataclass
class GRPOConfig(RLConfig):
    kl_coef: float = setting(0.0, "beta, the weight of the k3 KL to the reference (0: no reference pass)")
    scale_rewards: bool = setting(True, "divide each group's centred rewards by their std")
    loss_norm: str = setting("sequence", f"how token terms are averaged: {', '.join(LOSS_NORMS)}")
    dr_grpo: bool = setting(False, "Dr. GRPO: --no-scale-rewards and --loss-norm dr_grpo")

    def __post_init__(self):
        super().__post_init__()
        if self.k < 2:
            raise ConfigError(f"GRPO needs at least 2 answers per prompt to compare, got --k {self.k}")
        if self.loss_norm not in LOSS_NORMS:
            raise ConfigError(f"--loss-norm must be one of {', '.join(LOSS_NORMS)}, got {self.loss_norm!r}")
        if self.dr_grpo:
            self.scale_rewards, self.loss_norm = False, "dr_grpo"


def grpo_experience(policy, reference, tokenizer, prompts, rl, reward, seed):
    device = policy.wte.weight.device

    @torch.no_grad()
    def make(r):
        batch = pick_prompts(prompts, rl.prompts_per_rollout, seeded(seed, "grpo-prompts", r))
        out, _, scores = scored_rollout(policy, tokenizer, batch, rl.k, reward, seeded(seed, "grpo", r),
                                        rl.max_new_tokens, rl.temperature)
        advantages, zero_std = group_advantages(scores, rl.k, rl.scale_rewards)
        ids = out.ids.to(device)
        data = {"ids": ids, "mask": (out.mask & ~scores.isnan().unsqueeze(1)).to(device),
                "old_logp": out.logprobs.to(device), "advantages": advantages.to(device)}
        if rl.kl_coef:
            data["ref_logp"] = reference_logprobs(reference, ids, rl.temperature)
        return data, {**rollout_stats(scores, out, rl.k), "frac_reward_zero_std": zero_std.item()}
    return make


def grpo_step_loss(rl):
    def loss(policy, batch):
        mb, stats = batch
        ids, mask = mb["ids"], mb["mask"]
        all_logp = next_token_logprobs(policy(ids)[0], rl.temperature)  # (N, T-1, V)
        logp = picked(all_logp, ids)
        value, metrics = grpo_loss(logp, mb["old_logp"], mb.get("ref_logp"), mb["advantages"], mask, rl.clip,
                                   rl.kl_coef, rl.loss_norm, rl.max_new_tokens)
        return value, {**as_metrics(stats), **metrics,
                       "entropy": masked_mean(entropy(all_logp.detach()), mask)}
    return loss


def grpo(cfg, rl, base, reference=None):
    """Train the policy of run `base` with GRPO; writes the run folder cfg.out."""
    def method(policy, ref, tokenizer, prompts, reward):
        make = grpo_experience(policy, ref, tokenizer, prompts, rl, reward, cfg.seed)
        return policy, make, grpo_step_loss(rl), lambda m: m
    return train_rl(cfg, rl, base, reference, "grpo", method)
