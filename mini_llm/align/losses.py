"""The alignment losses, one function each, with the metrics TRL logs under the same names.

Shapes: B sequences (or B pairs), T positions, V vocabulary. Labels are next-token ids with
IGNORE (-1) where no loss is read (prompt and padding), as batches.response_labels makes them.
"""

import math

import torch
import torch.nn.functional as F

from .. import ops
from .batches import IGNORE


def sft_loss(logits, labels):
    """Supervised fine-tuning: the mean cross-entropy over the response tokens only (TRL's
    SFTTrainer with completion_only_loss). logits (B, T, V), labels (B, T)."""
    return ops.cross_entropy(logits, labels, ignore_index=IGNORE)


def sequence_logps(logits, labels):
    """log p(response | prompt) of each sequence: the sum over its labelled tokens of the
    token's log-probability. logits (B, T, V), labels (B, T) -> (B,) in float32."""
    mask = labels != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * mask).sum(dim=-1)


def bradley_terry_loss(chosen, rejected, center_rewards_coefficient=None):
    """Reward-model loss: -log sigmoid(r_chosen - r_rejected), the negative log-likelihood of
    the preferences under the Bradley-Terry model. Its rewards are defined up to a constant;
    TRL's center_rewards_coefficient adds coef * mean((r_c + r_r)^2) to pin them near 0.
    chosen, rejected: (B,) scalar rewards. Returns (loss, metrics)."""
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
    return loss, {"rewards/chosen": chosen.detach().mean(), "rewards/rejected": rejected.detach().mean(),
                  "rewards/margins": margin.detach().mean(),
                  "rewards/accuracies": (margin.detach() > 0).float().mean()}


DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type="sigmoid",
             label_smoothing=0.0):
    """Direct preference optimization (Rafailov et al. 2023) on sequence log-probs (B,) of the
    chosen and rejected responses under the policy and the frozen reference.

    The implicit reward of a response is beta * (log pi - log pi_ref). sigmoid: the
    Bradley-Terry loss of the reward margin, -log sigmoid(beta * h) with
    h = (log pi_c - log pi_ref_c) - (log pi_r - log pi_ref_r); with label_smoothing eps, the
    labels are taken as flipped with probability eps (cDPO). ipo (Azar et al. 2023):
    (h - 1 / (2 beta))^2, which stops pushing once the margin reaches 1 / (2 beta).
    Returns (loss, metrics under TRL's names)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    chosen = beta * (policy_chosen - ref_chosen).detach()
    rejected = beta * (policy_rejected - ref_rejected).detach()
    return losses.mean(), {
        "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "logps/chosen": policy_chosen.detach().mean(), "logps/rejected": policy_rejected.detach().mean(),
    }


def kl_estimate(logp_policy, logp_reference):
    """KL(policy || reference) from responses sampled from the policy: the mean of the
    sequence log-ratio log pi(y|x) - log pi_ref(y|x) (unbiased; single samples can be
    negative), with its standard error. Returns (kl, standard error) as floats."""
    ratio = (logp_policy - logp_reference).double()
    n = ratio.numel()
    stderr = ratio.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return ratio.mean().item(), stderr
