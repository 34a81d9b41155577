"""A verifiable task for RL: multi-digit addition with an exact checker.

A problem is the prompt "347+85" (operands drawn uniformly from 0 .. 10^digits - 1, written
without leading zeros); its one right response is "432". The checker is strict: the response
must be the sum in plain decimal and nothing else (no spaces, no leading zeros, no "=", no
newline), so a reward of 1 always means the model wrote exactly the answer.

Three-digit operands written most significant digit first are hard enough for a tiny character
model: its first digit depends on every carry, which it must resolve before writing anything.
A minute or so of CPU training solves part of the problems, which leaves RL room to gain:

    mini-llm align data addition --out DATA          # datasets.addition: every file, seeded
    mini-llm train --data DATA/corpus.txt --out BASE --n-layer 2 --n-head 4 --n-embd 64 \
        --block-size 32 --batch-size 32 --max-iters 3000 --lr 3e-3 --min-lr 3e-4 --sample-tokens 0
    mini-llm align sft --base BASE --data DATA/sft_train.jsonl --val-data DATA/sft_val.jsonl \
        --out SFT --max-iters 1200 --batch-size 32
    mini-llm align passk --model SFT --prompts DATA/test_prompts.jsonl   # pass_at_1_run

SFT's accuracy rises steeply with its length here (a few % at 800 steps, most problems at 1500),
so 1200 steps leave a model that gets a fair share right and most of the rest wrong by digits.
"""

import math
import random
import re

from ..errors import DataError
from ..loop import seeded
from .evaluate import check_new, distinct_prompts, sample_answers, write_new
from .runs import load_chat_model

PROMPT = re.compile(r"(0|[1-9][0-9]*)\+(0|[1-9][0-9]*)")
NUMBER = re.compile(r"0|[1-9][0-9]*")  # a plain decimal: no sign, no leading zero


def problems(count, seed, digits=3, exclude=()):
    """`count` distinct (a, b) pairs in a seeded order, none of them in `exclude`."""
    rng = random.Random(seed)
    seen, out = set(exclude), []
    if count > 10 ** (2 * digits) - len(seen):
        raise DataError(f"there are fewer than {count} distinct {digits}-digit problems left")
    while len(out) < count:
        pair = (rng.randrange(10 ** digits), rng.randrange(10 ** digits))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def prompt_of(a, b):
    return f"{a}+{b}"


def parse_prompt(prompt):
    """(a, b) of a prompt; a malformed prompt is the caller's error, not the model's."""
    m = PROMPT.fullmatch(prompt)
    if m is None:
        raise DataError(f"not an addition prompt: {prompt[:40]!r}")
    return int(m.group(1)), int(m.group(2))


def check(prompt, response):
    """1.0 if `response` is exactly the sum in plain decimal, else 0.0."""
    a, b = parse_prompt(prompt)
    return 1.0 if NUMBER.fullmatch(response) and int(response) == a + b else 0.0


addition_reward = check  # the RL reward is the checker: 1 for the exact answer, 0 otherwise


def mean_and_ci95(per_prompt):
    """(mean, (low, high)) over prompts: a normal-approximation 95% interval, mean +- 1.96
    standard errors of the per-prompt success rates. The prompt is the unit because samples of
    one prompt are correlated (an easy problem is solved by all of them)."""
    n = len(per_prompt)
    mean = sum(per_prompt) / n
    if n < 2:
        return mean, (float("nan"), float("nan"))
    std = math.sqrt(sum((p - mean) ** 2 for p in per_prompt) / (n - 1))
    half = 1.96 * std / math.sqrt(n)
    return mean, (mean - half, mean + half)


def pass_at_1(model, tokenizer, prompts, samples_per_prompt, seed, temperature=1.0):
    """The share of sampled answers that are exactly right, averaged per prompt first, with its
    95% interval (mean_and_ci95). An answer counts only if the model ended its turn. At
    temperature 0 (greedy) the samples of a prompt are identical: use samples_per_prompt=1.

    Returns {"pass_at_1", "ci95": [low, high], "prompts", "samples", "seed", "temperature"}."""
    if not prompts or samples_per_prompt < 1:
        raise DataError("pass@1 needs at least one prompt and one sample per prompt")
    per_prompt = []
    for k, prompt in enumerate(prompts):
        parse_prompt(prompt)  # a bad prompt fails before any sampling
        _, answers = sample_answers(model, tokenizer, prompt, samples_per_prompt,
                                    seeded(seed, "pass@1", k), temperature)
        per_prompt.append(sum(check(prompt, a.text) for a in answers if a.stopped) / len(answers))
    mean, (low, high) = mean_and_ci95(per_prompt)
    return {"pass_at_1": mean, "ci95": [low, high], "prompts": len(prompts),
            "samples": len(prompts) * samples_per_prompt, "seed": seed, "temperature": temperature}


def pass_at_1_run(model_path, prompts_path, out, max_prompts=200, samples_per_prompt=4, seeds=(1, 2, 3)):
    """`mini-llm align passk`: pass@1 at temperature 1 for each seed, then greedy accuracy,
    one JSONL record each into `out` (which must not exist)."""
    check_new(out)
    model, tokenizer, _ = load_chat_model(model_path)
    prompts = distinct_prompts(prompts_path)[:max_prompts]
    runs = [(seed, samples_per_prompt, 1.0) for seed in seeds] + [(0, 1, 0.0)]
    records = []
    for seed, samples, temperature in runs:
        r = {"model": str(model_path), **pass_at_1(model, tokenizer, prompts, samples, seed, temperature)}
        records.append(r)
        what = "greedy accuracy" if temperature == 0 else f"pass@1 (seed {seed}, {samples} samples/prompt)"
        print(f"{what}: {r['pass_at_1']:.3f}, 95% CI [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    write_new(out, records)
    return records
