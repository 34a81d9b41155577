"""Best-of-n: `mini-llm align best-of-n --model SFT_RUN --reward R --prompts F --n 1 4 16 64`.

Sample n answers, keep the one the reward scores highest. No training, and its KL to the
sampling policy is known in closed form: KL = log n - (n - 1) / n nats (Stiennon et al. 2020;
an upper bound, exact when no two answers tie). It is the baseline every RL method is measured
against, and with a proxy reward it over-optimises too (Gao et al. 2022).

One pool of `samples` answers per prompt serves every n: the expected score of the best of n
answers drawn from the pool without replacement is an exact weighted sum over the pool sorted by
the reward (expected_best), which has less noise than drawing subsets.
"""

import json
import math

import torch

from ..errors import ConfigError
from ..files import atomic_write_bytes
from ..loop import seeded
from .evaluate import check_new
from .rewards import make_reward, score
from .rl import Prompts, read_prompts, scored_rollout
from .runs import load_chat_model


def analytic_kl(n):
    return math.log(n) - (n - 1) / n


def expected_best(selector, value, n):
    """E[value of the answer with the highest selector among n drawn without replacement from
    the pool], per prompt. selector, value: (P, N). Sorted by selector, the i-th of N (from 1)
    is the best of a random n-subset with probability C(i-1, n-1) / C(N, n)."""
    N = selector.size(1)
    if not 1 <= n <= N:
        raise ConfigError(f"best of {n} needs 1 <= n <= the {N} answers sampled per prompt")
    order = selector.argsort(dim=1)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    # C(i-1, n-1) / C(N, n) = n (i-1)! / (i-n)! x (N-n)! / N!, in logs; 0 for i < n
    log_w = math.log(n) + torch.lgamma(i) - torch.lgamma(i - n + 1) - math.lgamma(N + 1) + math.lgamma(N - n + 1)
    weights = torch.where(i >= n, log_w.exp(), torch.zeros((), dtype=torch.float64))
    return (value.double().gather(1, order) * weights).sum(1)


def best_of_n(model_path, reward_spec, prompts_path, ns, samples, max_new_tokens=96, seed=1337,
              max_prompts=None, out=None):
    """Per n: the analytic KL and the expected reward (and gold reward, for a reward model) of
    the best of n, averaged over the prompts. Written to `out` (JSON) if given."""
    if out:
        check_new(out)
    if max(ns) > samples:
        raise ConfigError(f"--samples {samples} is fewer than the largest n, {max(ns)}")
    policy, tokenizer, _ = load_chat_model(model_path)
    prompts = read_prompts(prompts_path, tokenizer, max_prompts)
    reward = make_reward(reward_spec)
    gold = make_reward("gold") if reward_spec not in ("gold", "addition") else None
    proxy_scores, gold_scores = [], []
    for p, (text, ids) in enumerate(zip(prompts.texts, prompts.ids)):
        _, answers, scores = scored_rollout(policy, tokenizer, Prompts([text], [ids]), samples, reward,
                                            seeded(seed, "best-of-n", p), max_new_tokens)
        proxy_scores.append(scores)
        if gold is not None:
            gold_scores.append(score(gold, answers))
        print(f"prompt {p + 1}/{len(prompts.texts)}: {text!r}, mean reward {scores.nanmean():+.3f}", flush=True)
    proxy = torch.stack(proxy_scores)
    selector = proxy.nan_to_num(float("-inf"))  # an answer the reward failed on is never preferred...
    rows = []
    for n in ns:  # ... and counts 0 in the rare draw where all n failed
        row = {"n": n, "kl": analytic_kl(n), "reward": expected_best(selector, proxy.nan_to_num(0.0), n).mean().item()}
        if gold is not None:
            row["gold_reward"] = expected_best(selector, torch.stack(gold_scores).nan_to_num(0.0), n).mean().item()
        rows.append(row)
    result = {"model": str(model_path), "reward": reward_spec, "prompts": len(prompts.texts), "samples": samples,
              "max_new_tokens": max_new_tokens, "seed": seed, "best_of_n": rows}
    if out:
        atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    return result
