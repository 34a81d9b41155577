"""The verifiable addition task: seeded problems, the strict checker, the files, pass@1."""

import json
import math

import pytest

from mini_llm.align import arithmetic
from mini_llm.align.arithmetic import (addition_reward, check, mean_and_ci95, parse_prompt, pass_at_1,
                                       problems)
from mini_llm.align.datasets import addition
from mini_llm.align.evaluate import Answer
from mini_llm.cli import main
from mini_llm.errors import DataError
from mini_llm.model import GPT, GPTConfig
from mini_llm.tokenizer import CharTokenizer
from mini_llm.tokenizer.chat import ChatTokenizer


def test_problems_are_distinct_seeded_and_respect_exclude():
    first = problems(50, seed=3, digits=2)
    assert first == problems(50, seed=3, digits=2) and first != problems(50, seed=4, digits=2)
    assert len(set(first)) == 50 and all(0 <= a < 100 and 0 <= b < 100 for a, b in first)
    assert not set(problems(50, seed=3, digits=2, exclude=first)) & set(first)
    with pytest.raises(DataError, match="fewer than"):
        problems(101, seed=0, digits=1)  # 1-digit operands give 100 problems only


@pytest.mark.parametrize("response, reward", [
    ("432", 1.0),
    ("431", 0.0),  # wrong
    ("0432", 0.0),  # a leading zero
    ("432 ", 0.0), (" 432", 0.0), ("432\n", 0.0),  # whitespace is junk too
    ("=432", 0.0), ("432abc", 0.0), ("+432", 0.0), ("4 32", 0.0),
    ("", 0.0),
])
def test_the_checker_accepts_only_the_plain_sum(response, reward):
    assert check("347+85", response) == reward == addition_reward("347+85", response)


def test_zero_is_written_as_one_digit():
    assert check("0+0", "0") == 1.0 and check("0+0", "00") == 0.0


@pytest.mark.parametrize("prompt", ["347+085", "347 + 85", "347+", "a+b", "347-85", ""])
def test_a_malformed_prompt_is_refused(prompt):
    with pytest.raises(DataError, match="not an addition prompt"):
        parse_prompt(prompt)


def test_the_files_split_the_problems_disjointly(tmp_path):
    sizes = {"test_prompts": 20, "rl_prompts": 30, "sft_val": 10, "sft_train": 40, "corpus": 50}
    addition(tmp_path, seed=1, digits=2, sizes=sizes)
    seen = {}
    for name in ("test_prompts", "rl_prompts", "sft_val", "sft_train"):
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        seen[name] = {r["prompt"] for r in rows}
        assert len(rows) == len(seen[name]) == sizes[name]
        assert all(check(r["prompt"], r.get("response", r.get("answer"))) == 1.0 for r in rows)
    lines = (tmp_path / "corpus.txt").read_text().splitlines()
    seen["corpus"] = {line.split("=")[0] for line in lines}
    assert len(lines) == len(seen["corpus"]) == sizes["corpus"]
    assert all(check(*line.split("=")) == 1.0 for line in lines)
    assert len(set().union(*seen.values())) == sum(sizes.values())  # no problem in two files
    # the test set does not depend on the other sizes
    (tmp_path / "more").mkdir()
    addition(tmp_path / "more", seed=1, digits=2, sizes={**sizes, "sft_train": 99})
    assert (tmp_path / "more" / "test_prompts.jsonl").read_text() == (tmp_path / "test_prompts.jsonl").read_text()


def test_ci95_is_the_normal_interval_over_prompts():
    # rates 0, 1, 0, 1: mean 1/2, sample std sqrt(1/3), standard error sqrt(1/3)/2
    mean, (low, high) = mean_and_ci95([0.0, 1.0, 0.0, 1.0])
    half = 1.96 * math.sqrt(1 / 3) / 2
    assert mean == 0.5 and low == pytest.approx(0.5 - half) and high == pytest.approx(0.5 + half)
    assert mean_and_ci95([1.0, 1.0]) == (1.0, (1.0, 1.0))
    assert all(math.isnan(x) for x in mean_and_ci95([1.0])[1])


def test_pass_at_1_averages_per_prompt_and_counts_finished_answers_only(monkeypatch):
    canned = {"1+1": [("2", True), ("2", False), ("3", True), ("02", True)],  # 1 of 4 counts
              "2+2": [("4", True)] * 4}
    monkeypatch.setattr(arithmetic, "sample_answers", lambda model, tok, prompt, n, gen, temperature: (
        None, [Answer([], text, stopped, True) for text, stopped in canned[prompt][:n]]))
    r = pass_at_1(None, None, ["1+1", "2+2"], 4, seed=0)
    assert r["pass_at_1"] == mean_and_ci95([0.25, 1.0])[0] and r["ci95"] == list(mean_and_ci95([0.25, 1.0])[1])
    assert r["samples"] == 8 and r["prompts"] == 2
    with pytest.raises(DataError, match="at least one prompt"):
        pass_at_1(None, None, [], 4, seed=0)


def test_pass_at_1_of_a_model_is_reproducible_and_greedy_ignores_the_seed():
    tok = ChatTokenizer(CharTokenizer(sorted("0123456789+=\n")))
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=16)).eval()
    prompts = ["12+34", "5+6", "99+1"]
    assert pass_at_1(model, tok, prompts, 3, seed=1) == pass_at_1(model, tok, prompts, 3, seed=1)
    greedy = [pass_at_1(model, tok, prompts, 1, seed=s, temperature=0.0) for s in (1, 2)]
    assert greedy[0]["pass_at_1"] == greedy[1]["pass_at_1"]
    with pytest.raises(DataError, match="not an addition prompt"):
        pass_at_1(model, tok, ["1+1", "x"], 1, seed=0)


def test_passk_end_to_end_writes_one_record_per_seed_and_greedy(tmp_path):
    sizes = {"test_prompts": 5, "rl_prompts": 5, "sft_val": 5, "sft_train": 20, "corpus": 200}
    addition(tmp_path, seed=0, digits=2, sizes=sizes)
    base, sft, out = tmp_path / "base", tmp_path / "sft", tmp_path / "passk.jsonl"
    fast = ["--max-iters", "2", "--eval-interval", "1", "--batch-size", "4", "--device", "cpu"]
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "corpus.txt"), "--out", str(base),
                 "--sample-tokens", "0", *fast]) == 0
    assert main(["align", "sft", "--base", str(base), "--data", str(tmp_path / "sft_train.jsonl"),
                 "--val-data", str(tmp_path / "sft_val.jsonl"), "--out", str(sft), *fast]) == 0
    passk = ["align", "passk", "--model", str(sft), "--prompts", str(tmp_path / "test_prompts.jsonl"),
             "--max-prompts", "3", "--samples-per-prompt", "2", "--seeds", "1", "2", "--out", str(out)]
    assert main(passk) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["seed"], r["temperature"], r["samples"]) for r in rows] == [(1, 1.0, 6), (2, 1.0, 6), (0, 0.0, 3)]
    assert all(0 <= r["pass_at_1"] <= 1 for r in rows)
    before = out.read_text()
    assert main(passk) != 0 and out.read_text() == before  # an existing output is refused, kept
