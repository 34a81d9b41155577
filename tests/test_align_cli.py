"""`mini-llm align`: SFT, pairs, reward model, DPO and eval end to end on a tiny model, and the
bad inputs each refuses with one line and nothing overwritten."""

import json
import math

import pytest
import torch

from mini_llm.tokenizer.chat import ChatTokenizer
from mini_llm.align.reward import load_reward_model
from mini_llm.checkpoint import load_model
from mini_llm import ops
from mini_llm.cli import main

from conftest import CORPUS

SPEECHES = [("First Citizen", "Speak, speak."), ("All", "Resolved. resolved."),
            ("First Citizen", "You are all resolved rather to die than to famish?"),
            ("All", "Speak."), ("First Citizen", "Before we proceed any further, hear me speak.")] * 4


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny character model pretrained a few steps on CORPUS."""
    folder = tmp_path_factory.mktemp("align")
    text = folder / "corpus.txt"
    text.write_text(CORPUS * 20)
    out = folder / "base"
    assert main(["train", "--preset", "tiny", "--block-size", "96", "--max-iters", "4", "--data", str(text),
                 "--out", str(out), "--sample-tokens", "0", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sftdata")
    return write_jsonl(folder / "sft.jsonl", [{"prompt": p, "response": r} for p, r in SPEECHES])


def pairs_file(path):
    return write_jsonl(path, [{"prompt": p, "chosen": r, "rejected": "Speak."} for p, r in SPEECHES])


FAST = ["--max-iters", "2", "--eval-interval", "1", "--batch-size", "4", "--device", "cpu"]


def test_sft_then_reward_then_dpo_then_eval(base, sft_data, tmp_path):
    sft = tmp_path / "sft"
    assert main(["align", "sft", "--base", str(base), "--data", str(sft_data), "--out", str(sft), *FAST]) == 0
    model, ckpt = load_model(sft)  # an ordinary model: the chat markers are in its tokenizer and vocabulary
    assert isinstance(ckpt.tokenizer, ChatTokenizer) and model.config.vocab_size == ckpt.tokenizer.vocab_size
    records = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 1, 2]

    pairs = pairs_file(tmp_path / "pairs.jsonl")
    rm = tmp_path / "rm"
    assert main(["align", "reward", "--base", str(sft), "--data", str(pairs), "--out", str(rm),
                 "--center-rewards-coefficient", "0.01", *FAST]) == 0
    reward_model, _ = load_reward_model(rm)
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    assert reward_model(ids, torch.tensor([3, 2])).shape == (2,)

    dpo = tmp_path / "dpo"
    assert main(["align", "dpo", "--base", str(sft), "--data", str(pairs), "--out", str(dpo), "--beta", "0.2",
                 *FAST]) == 0
    train = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text().splitlines()
             if '"train"' in line]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected"):
        assert name in train[-1]

    results = tmp_path / "eval.jsonl"
    assert main(["align", "eval", "--models", str(base), str(sft), str(dpo), "--reference", str(sft),
                 "--prompts", str(sft_data), "--samples-per-prompt", "2", "--out", str(results),
                 "--plot", str(tmp_path / "frontier.png")]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["base", "sft", "dpo"] and rows[2]["beta"] == 0.2
    assert rows[1]["kl"] == 0  # the reference against itself
    assert all(-1 <= r["gold_reward"] <= 1 and 0 <= r["format_rate"] <= 1 for r in rows)
    assert (tmp_path / "frontier.png").stat().st_size > 0


def run_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mini-llm: error: ") and "\n" not in err
    return err


def test_bad_inputs_are_one_line_errors_and_overwrite_nothing(base, sft_data, tmp_path, capsys):
    out = tmp_path / "run"
    sft = ["align", "sft", "--base", str(base), "--out", str(out), *FAST]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "All", "response": "Speak."}\n{"prompt": "All", "response": "Sp\n')
    assert f"{bad}:2: not valid JSON" in run_error(capsys, [*sft, "--data", str(bad)])
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "All", "response": ""}])
    assert f"{empty}:1: the response is empty" in run_error(capsys, [*sft, "--data", str(empty)])
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "All " * 30, "response": "Speak."}])
    assert "more than the context of 96" in run_error(capsys, [*sft, "--data", str(long)])
    assert not out.exists()  # nothing was trained on garbage
    assert "no checkpoint at" in run_error(capsys, ["align", "sft", "--base", str(tmp_path / "nope"),
                                                    "--data", str(sft_data), "--out", str(out)])

    other = tmp_path / "other"  # a reference of another shape
    assert main(["train", "--preset", "tiny", "--block-size", "96", "--n-embd", "16", "--max-iters", "1",
                 "--data", str(base.parent / "corpus.txt"), "--out", str(other), "--sample-tokens", "0"]) == 0
    pairs = pairs_file(tmp_path / "pairs.jsonl")
    err = run_error(capsys, ["align", "dpo", "--base", str(base), "--reference", str(other), "--data", str(pairs),
                             "--out", str(out), *FAST])
    assert "another shape than the policy" in err and "n_embd" in err
    assert not out.exists()

    assert main([*sft, "--data", str(sft_data)]) == 0
    before = (out / "ckpt.safetensors").read_bytes()
    assert "exists" in run_error(capsys, [*sft, "--data", str(sft_data)])  # an existing run is kept
    assert (out / "ckpt.safetensors").read_bytes() == before


def test_pairs_are_sampled_answers_labelled_by_the_gold_reward(base, tmp_path, monkeypatch):
    from mini_llm.align import pairs as pairs_module

    monkeypatch.setattr(pairs_module, "gold_reward", lambda text: float(len(text)))  # longer is better
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "All"}, {"prompt": "First Citizen"}])
    out = tmp_path / "pairs.jsonl"
    assert main(["align", "pairs", "--model", str(base), "--prompts", str(prompts), "--pairs", "6",
                 "--samples-per-prompt", "8", "--out", str(out)]) == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 6 and {p["prompt"] for p in pairs} <= {"All", "First Citizen"}
    for p in pairs:
        assert p["chosen_reward"] == len(p["chosen"]) > p["rejected_reward"] == len(p["rejected"])
        assert "<|" not in p["chosen"] + p["rejected"] and p["rejected"].strip()
    assert main(["align", "pairs", "--model", str(base), "--prompts", str(prompts), "--out", str(out)]) == 2
    # Bradley-Terry labels with a tiny scale: each a coin flip, so some pairs prefer the shorter
    noisy = tmp_path / "noisy.jsonl"
    assert main(["align", "pairs", "--model", str(base), "--prompts", str(prompts), "--pairs", "20",
                 "--bt-scale", "1e-9", "--out", str(noisy)]) == 0
    flipped = [p["chosen_reward"] < p["rejected_reward"] for p in map(json.loads, noisy.read_text().splitlines())]
    assert 0 < sum(flipped) < 20


def test_align_data_makes_the_speaker_task_from_tiny_shakespeare(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare.txt").write_text(CORPUS * 10)
    monkeypatch.setenv("MINI_LLM_DATA_DIR", str(tmp_path))
    assert main(["align", "data", "shakespeare", "--out", str(tmp_path / "out")]) == 0
    train, val = ([json.loads(line) for line in (tmp_path / "out" / f"sft_{split}.jsonl").read_text().splitlines()]
                  for split in ("train", "val"))
    assert len(train) == 36 and len(val) == 4  # 40 turns, every 10th held out
    assert val[0] == {"prompt": "First Citizen", "response": "Before we proceed any further, hear me speak."}
    assert {r["prompt"] for r in train} == {"First Citizen", "All"}


# --- part 2: RL --------------------------------------------------------------------------------
RL_FAST = ["--max-new-tokens", "6", "--max-iters", "2", "--eval-interval", "1", "--log-interval", "1",
           "--eval-samples", "2", "--device", "cpu"]


def records_of(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_grpo_ppo_and_best_of_n_end_to_end(base, sft_data, tmp_path):
    prompts = ["--prompts", str(sft_data), "--eval-prompts", str(sft_data)]
    grpo = tmp_path / "grpo"
    assert main(["align", "grpo", "--base", str(base), *prompts, "--reward", "gold", "--k", "2",
                 "--prompts-per-rollout", "2", "--dr-grpo", "--out", str(grpo), *RL_FAST]) == 0
    train = records_of(grpo, "train")
    assert {"reward", "reward_std", "frac_reward_zero_std", "clip_ratio", "entropy"} <= set(train[0])
    assert [r["iter"] for r in records_of(grpo, "eval")] == [0, 1, 2] and "kl" in records_of(grpo, "eval")[0]
    model, _ = load_model(grpo)  # the policy alone: an ordinary language model
    assert (grpo / "rewards.png").stat().st_size > 0

    ppo = tmp_path / "ppo"  # through the reference ops: --kernels reaches the rollouts and the training
    try:
        assert main(["align", "ppo", "--base", str(base), *prompts, "--reward", "gold", "--prompts-per-rollout", "4",
                     "--epochs", "1", "--minibatches", "1", "--target-kl", "1.0", "--kernels", "reference",
                     "--out", str(ppo), *RL_FAST]) == 0
    finally:
        ops.set_kernels(None)
    assert json.loads((ppo / "summary.json").read_text())["train_config"]["kernels"] == "reference"
    first = records_of(ppo, "train")[0]  # iteration 1: the first step on a fresh rollout, on-policy
    assert first["ratio"] == pytest.approx(1.0, abs=1e-5) and first["clip_ratio"] == 0
    assert {"value_loss", "explained_variance", "kl", "kl_coef", "entropy"} <= set(first)
    assert set(load_model(ppo)[0].state_dict()) == set(model.state_dict())  # no value model in it

    out = tmp_path / "bon.json"
    assert main(["align", "best-of-n", "--model", str(base), "--reward", "gold", "--prompts", str(sft_data),
                 "--samples", "4", "--n", "1", "2", "4", "--max-new-tokens", "6", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["best_of_n"]
    assert [r["n"] for r in rows] == [1, 2, 4] and rows[2]["kl"] == pytest.approx(math.log(4) - 0.75)
    assert rows[0]["reward"] <= rows[1]["reward"] <= rows[2]["reward"]  # the best of more is no worse


def test_a_reward_that_fails_on_some_answers_skips_them(base, sft_data, tmp_path, monkeypatch, capsys):
    from mini_llm.align import rewards

    calls = iter(range(10 ** 6))

    def flaky(text):  # raises on every third answer, NaN on the next, 0.5 on the one after
        n = next(calls) % 3
        if n == 0:
            raise ValueError("cannot score")
        return float("nan") if n == 1 else 0.5
    monkeypatch.setattr(rewards, "gold_reward", flaky)
    out = tmp_path / "grpo"
    assert main(["align", "grpo", "--base", str(base), "--prompts", str(sft_data), "--eval-prompts", str(sft_data),
                 "--reward", "gold", "--k", "4", "--prompts-per-rollout", "2", "--seed", "3", "--out", str(out),
                 *RL_FAST]) == 0
    assert "warning: the reward failed on" in capsys.readouterr().err
    assert any(r["skipped"] > 0 for r in records_of(out, "train"))
    assert all(math.isfinite(r["loss"]) for r in records_of(out, "train"))


def test_rl_bad_inputs_are_one_line_errors(base, sft_data, tmp_path, capsys):
    out = tmp_path / "run"
    grpo = ["align", "grpo", "--base", str(base), "--out", str(out), "--eval-prompts", str(sft_data), *RL_FAST]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no examples" in run_error(capsys, [*grpo, "--prompts", str(empty)])
    assert "at least 2 answers per prompt" in run_error(capsys, [*grpo, "--prompts", str(sft_data), "--k", "1"])
    assert "cannot be split into 64 minibatches" in run_error(
        capsys, [*grpo, "--prompts", str(sft_data), "--k", "2", "--prompts-per-rollout", "2", "--minibatches", "64"])
    assert "reward-model run" in run_error(capsys, [*grpo, "--prompts", str(sft_data), "--reward", str(tmp_path)])
    # the checker of the addition task cannot read a speaker's name: every answer fails
    assert "failed on every one" in run_error(capsys, [*grpo, "--prompts", str(sft_data), "--reward", "addition"])
    assert not (out / "ckpt.safetensors").exists()
    assert "fewer than the largest n" in run_error(capsys, ["align", "best-of-n", "--model", str(base), "--reward", "gold",
                                                            "--prompts", str(sft_data), "--samples", "2", "--n", "4"])


def test_rl_turns_dropout_off_so_the_first_step_is_on_policy(base, sft_data, tmp_path):
    noisy = tmp_path / "dropout-base"
    assert main(["train", "--preset", "tiny", "--block-size", "96", "--max-iters", "2", "--dropout", "0.5",
                 "--data", str(base.parent / "corpus.txt"), "--out", str(noisy), "--sample-tokens", "0"]) == 0
    out = tmp_path / "ppo"
    assert main(["align", "ppo", "--base", str(noisy), "--prompts", str(sft_data), "--eval-prompts", str(sft_data),
                 "--reward", "gold", "--prompts-per-rollout", "4", "--minibatches", "1", "--epochs", "1",
                 "--out", str(out), *RL_FAST]) == 0
    assert records_of(out, "train")[0]["ratio"] == pytest.approx(1.0, abs=1e-5)
