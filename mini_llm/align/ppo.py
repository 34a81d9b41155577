"""PPO, InstructGPT-style: `mini-llm align ppo --base SFT_RUN --prompts F --reward R`.

Each rollout: one answer (or --k) per prompt, scored by the reward at its last token. Every
answer token also pays -kl_coef x (log pi - log pi_ref), the per-token KL penalty to the frozen
reference, so the policy earns reward without drifting far from what it was. A value model
(a copy of the policy's transformer with a scalar head on every position) predicts the return
before each token; GAE turns rewards and values into advantages, whitened per rollout. Then
`epochs` passes of `minibatches` steps minimise
    clipped policy loss + vf_coef x clipped value loss - ent_coef x entropy.
With --target-kl the penalty's weight adapts (Ziegler et al. 2019): it grows while the measured
KL is over the target and shrinks while it is under.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..loop import seeded
from ..model import GPT
from .reward import RewardModel
from .rl import (RLConfig, as_metrics, pick_prompts, reference_logprobs, rollout_stats, scored_rollout, setting,
                 train_rl)
from .rl_losses import (clipped_policy_loss, clipped_value_loss, explained_variance, gae, kl_penalty, masked_mean,
                        masked_whiten)
from .rollout import entropy, next_token_logprobs, picked


@dataclass
class PPOConfig(RLConfig):
    k: int = setting(1, "answers sampled per prompt")
    prompts_per_rollout: int = setting(32, "prompts per rollout")
    epochs: int = setting(2, "optimisation passes over each rollout (ppo_epochs)")
    minibatches: int = setting(2, "optimizer steps per pass")
    gamma: float = setting(1.0, "the discount: 1, an answer is one episode with its reward at the end")
    lam: float = setting(0.95, "GAE's lambda: 1 is the Monte-Carlo return, 0 one-step TD")
    vf_coef: float = setting(0.1, "the value loss's weight")
    value_clip: float = setting(0.2, "the clip range of the value model's update")
    ent_coef: float = setting(0.0, "the entropy bonus's weight")
    target_kl: float = setting(None, "adapt --kl-coef to keep the KL per answer near this (nats)")
    kl_horizon: int = setting(10000, "the adaptive controller's horizon, in answers")


class ValueModel(RewardModel):
    """A reward model's shape read at every position: V before each token, (N, T)."""

    def forward(self, ids):
        return self.head(self.body.features(ids)).squeeze(-1)


class ActorCritic(nn.Module):
    """The policy (a GPT) and its value model, trained by one optimizer."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.value = ValueModel(copy.deepcopy(policy))  # starts from the policy's own features

    @property
    def config(self):
        return self.policy.config

    param_groups = GPT.param_groups


class AdaptiveKL:
    """kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) x answers / horizon, after each rollout."""

    def __init__(self, coef, target, horizon):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl, answers):
        if self.target is not None:
            error = max(-0.2, min(0.2, kl / self.target - 1))
            self.coef *= 1 + error * answers / self.horizon


def ppo_experience(model, reference, tokenizer, prompts, rl, reward, seed, controller):
    """make(r) for Minibatches: rollout r with its advantages and returns."""
    device = model.policy.wte.weight.device

    @torch.no_grad()
    def make(r):
        batch = pick_prompts(prompts, rl.prompts_per_rollout, seeded(seed, "ppo-prompts", r))
        out, _, scores = scored_rollout(model.policy, tokenizer, batch, rl.k, reward, seeded(seed, "ppo", r),
                                        rl.max_new_tokens, rl.temperature)
        ids, old_logp = out.ids.to(device), out.logprobs.to(device)
        mask = (out.mask & ~scores.isnan().unsqueeze(1)).to(device)  # skipped answers: no token trains
        kl = kl_penalty(old_logp, reference_logprobs(reference, ids, rl.temperature), "k1") * mask
        rewards = -controller.coef * kl
        last = mask.float().cumsum(1).argmax(1)  # each answer's last token
        rewards[torch.arange(len(last), device=device), last] += scores.nan_to_num(0.0).to(device)
        values = model.value(ids)[:, :-1] * mask
        advantages, returns = gae(rewards, values, mask, rl.gamma, rl.lam)
        stats = {**rollout_stats(scores, out, rl.k), "kl": kl.sum(1).mean().item(), "kl_coef": controller.coef}
        controller.update(stats["kl"], len(out.answers))
        return {"ids": ids, "mask": mask, "old_logp": old_logp, "old_values": values,
                "advantages": masked_whiten(advantages, mask), "returns": returns}, stats
    return make


def ppo_loss(rl):
    def loss(model, batch):
        mb, stats = batch
        ids, mask = mb["ids"], mb["mask"]
        all_logp = next_token_logprobs(model.policy(ids)[0], rl.temperature)  # (N, T-1, V)
        logp = picked(all_logp, ids)
        per_token, metrics = clipped_policy_loss(logp, mb["old_logp"], mb["advantages"], mask, rl.clip)
        policy_loss = masked_mean(per_token, mask)
        values = model.value(ids)[:, :-1]
        value_loss, value_metrics = clipped_value_loss(values, mb["old_values"], mb["returns"], mask, rl.value_clip)
        ent = masked_mean(entropy(all_logp), mask)
        total = policy_loss + rl.vf_coef * value_loss - rl.ent_coef * ent
        return total, {**as_metrics(stats), **metrics, **value_metrics, "policy_loss": policy_loss.detach(),
                       "value_loss": value_loss.detach(), "entropy": ent.detach(),
                       "explained_variance": explained_variance(values.detach(), mb["returns"], mask)}
    return loss


def ppo(cfg, rl, base, reference=None):
    """Train the policy of run `base` with PPO; writes the run folder cfg.out."""
    def method(policy, ref, tokenizer, prompts, reward):
        model = ActorCritic(policy)
        controller = AdaptiveKL(rl.kl_coef, rl.target_kl, rl.kl_horizon)
        make = ppo_experience(model, ref, tokenizer, prompts, rl, reward, cfg.seed, controller)
        return model, make, ppo_loss(rl), lambda m: m.policy
    return train_rl(cfg, rl, base, reference, "ppo", method)
