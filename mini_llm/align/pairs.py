"""Preference pairs: `mini-llm align pairs --model SFT_RUN --prompts FILE --out PAIRS.jsonl`.

Answers sampled from a model (the SFT model), labelled by the gold reward: the preference data
of the DPO paper's controlled experiment, in the {"prompt", "chosen", "rejected"} lines that
`mini-llm align reward` and `mini-llm align dpo` read (with the two gold rewards beside them).
"""

import math

import torch

from ..errors import DataError
from ..loop import seeded
from .evaluate import check_new, distinct_prompts, sample_answers, write_new
from .gold import gold_reward
from .runs import load_chat_model


def make_pairs(model, tokenizer, prompts, n_pairs, seed, samples_per_prompt=8, bt_scale=None):
    """n_pairs preference pairs from answers sampled per prompt (prompts in turn) and labelled
    by the gold reward. A prompt's usable answers (answer.usable) are sorted by reward and the
    upper half is paired with the lower half, best with median, and so on; ties are dropped (most
    answers score 0, and a pair of two zeros says nothing). Labels: the higher reward is chosen,
    or with bt_scale they are drawn from the Bradley-Terry model,
    P(a preferred) = sigmoid(bt_scale * (r_a - r_b)): noisy labels, as human ones are.
    Returns (pairs, answers sampled)."""
    pairs, sampled, k = [], 0, 0
    while len(pairs) < n_pairs:
        prompt = prompts[k % len(prompts)]
        generator = seeded(seed, "pairs", k)
        _, answers = sample_answers(model, tokenizer, prompt, samples_per_prompt, generator)
        sampled += len(answers)
        scored = sorted(((gold_reward(a.text), a.text) for a in answers if a.usable), reverse=True)
        half = len(scored) // 2
        for (ra, a), (rb, b) in zip(scored[:half], scored[half:2 * half]):
            if ra == rb:
                continue
            p_a = 1.0 / (1.0 + math.exp(-bt_scale * (ra - rb))) if bt_scale else 1.0
            a_wins = torch.rand((), generator=generator).item() < p_a
            (chosen, rc), (rejected, rr) = ((a, ra), (b, rb)) if a_wins else ((b, rb), (a, ra))
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                          "chosen_reward": rc, "rejected_reward": rr})
        k += 1
        if k > 50 * n_pairs:
            raise DataError(f"only {len(pairs)} usable pairs after {k} prompts: the model rarely ends "
                            "its answers or its answers rarely differ in gold reward")
    return pairs[:n_pairs], sampled


def write_pairs(model_path, prompts_path, n_pairs, out, seed=1337, samples_per_prompt=16, bt_scale=None):
    check_new(out)
    model, tokenizer, _ = load_chat_model(model_path)
    pairs, sampled = make_pairs(model, tokenizer, distinct_prompts(prompts_path), n_pairs, seed,
                                samples_per_prompt, bt_scale)
    write_new(out, pairs)
    agree = sum(p["chosen_reward"] > p["rejected_reward"] for p in pairs) / len(pairs)
    print(f"wrote {len(pairs)} pairs to {out} from {sampled} sampled answers (the gold reward "
          f"agrees with {agree:.0%} of the labels)")
