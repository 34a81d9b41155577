"""The rewards RL optimises, one interface: reward(sample) -> float, for one sampled answer.

    gold       the gold reward (gold.py) of the answer's text
    addition   the exact checker of the verifiable task (arithmetic.py): 1 right, 0 wrong
    RUN        a reward model trained by `mini-llm align reward` (the proxy), reading the ids

score() calls it on every answer of a rollout. An answer whose reward raises or is not a
finite number is skipped, not trained on, and reported: one bad sample never corrupts a run,
and a reward that fails on every answer stops it.
"""

import math
import sys
from dataclasses import dataclass

import torch

from ..errors import CheckpointError, ConfigError, DataError
from .arithmetic import addition_reward
from .gold import gold_reward
from .reward import load_reward_model


@dataclass
class Sample:
    prompt: str  # the user's prompt, without the chat markers
    text: str  # the answer decoded, without the end-of-turn token
    ids: list  # prompt (in the chat template) + answer, as the model read them


def proxy_reward(path, device="cpu"):
    """The reward model of run `path` as a reward(sample) function."""
    model, _ = load_reward_model(path, device)

    @torch.no_grad()
    def reward(sample):
        ids = torch.tensor([sample.ids], device=device)
        return model(ids, torch.tensor([len(sample.ids)], device=device)).item()
    return reward


def make_reward(spec, device="cpu"):
    """`gold`, `addition` or the path of a reward-model run."""
    if spec == "gold":
        return lambda sample: gold_reward(sample.text)
    if spec == "addition":
        return lambda sample: addition_reward(sample.prompt, sample.text)
    try:
        return proxy_reward(spec, device)
    except CheckpointError as e:
        raise ConfigError(f"--reward must be gold, addition or a reward-model run ({e})") from None


def score(reward, samples):
    """(N,) float32 rewards, NaN where the reward raised or gave a non-number (skipped, with one
    warning line naming how many and the first cause). Refuses a rollout where every answer failed."""
    values, failures = [], []
    for i, sample in enumerate(samples):
        try:
            value = float(reward(sample))
            if not math.isfinite(value):
                raise ValueError(f"returned {value}")
        except Exception as e:  # a user's reward may raise anything; the run must go on
            failures.append(f"answer {i}: {type(e).__name__}: {e}")
            value = float("nan")
        values.append(value)
    if failures and len(failures) == len(samples):
        raise DataError(f"the reward failed on every one of {len(samples)} answers ({failures[0]})")
    if failures:
        print(f"warning: the reward failed on {len(failures)} of {len(samples)} answers, which are "
              f"skipped (first: {failures[0]})", file=sys.stderr)
    return torch.tensor(values, dtype=torch.float32)
