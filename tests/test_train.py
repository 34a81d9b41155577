"""Training runs, checkpoints and the command line, on a tiny model and a tiny text."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mini_llm.checkpoint import load_checkpoint, load_model
from mini_llm.cli import main
from mini_llm.errors import CheckpointError, ConfigError
from mini_llm.train import TrainConfig, train

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1)  # dropout: RNG in play


def run(corpus, out, max_iters, resume=False):
    """A fresh run to max_iters, or (resume=True) the run in `out` continued to max_iters."""
    cfg = TrainConfig(out=str(out), data=str(corpus), batch_size=4, grad_accum=2, max_iters=max_iters,
                      lr_decay_iters=12, warmup_iters=3, eval_interval=4, eval_iters=2, log_interval=1,
                      sample_tokens=0)
    if resume:
        return train({}, cfg, resume={"max_iters": max_iters})
    return train(TINY, cfg)


def losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["iter"], r.get("loss"), r.get("val_loss")) for r in records]


def test_resume_reproduces_an_uninterrupted_run(corpus, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(corpus, whole, 12)
    run(corpus, split, 8)
    first_half = losses(split)
    run(corpus, split, 12, resume=True)
    assert losses(split) == losses(whole)  # bit for bit, evaluations included
    assert losses(split)[: len(first_half)] == first_half
    a, b = load_checkpoint(whole / "ckpt.safetensors"), load_checkpoint(split / "ckpt.safetensors")
    assert a.meta["iter"] == b.meta["iter"] == 12
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k
    for out in (whole, split):
        assert {"ckpt.safetensors", "metrics.jsonl", "summary.json", "loss.png"} <= set(os.listdir(out))


def test_a_finished_run_can_be_extended(corpus, tmp_path):
    out = tmp_path / "run"
    run(corpus, out, 6)  # ends between two evaluations (every 4)
    run(corpus, out, 9, resume=True)
    evals = [it for kind, it, _, _ in losses(out) if kind == "eval"]
    trains = [it for kind, it, _, _ in losses(out) if kind == "train"]
    assert evals == [0, 4, 6, 8, 9] and trains == list(range(1, 10))
    assert load_checkpoint(out).meta["iter"] == 9


def test_resume_keeps_the_checkpoints_settings(corpus, tmp_path, capsys):
    """A setting left off the resume command comes from the checkpoint, not a preset."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                 "--max-iters", "4", "--sample-tokens", "0", "--kernels", "gelu=reference"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "6"]) == 0
    printed = capsys.readouterr().out
    assert "gelu=reference" in printed and "iterations 4..6" in printed and "sample:" not in printed
    assert load_checkpoint(out).meta["train_config"]["data"] == str(corpus)
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "6"]) == 2  # nothing left
    assert "is at iteration 6: pass a larger --max-iters" in capsys.readouterr().err


def test_checkpoint_round_trip_and_damage(corpus, tmp_path):
    out = tmp_path / "run"
    run(corpus, out, 4)
    path = out / "ckpt.safetensors"
    model, ckpt = load_model(out)
    assert ckpt.optimizer_state["state"] and ckpt.meta["iter"] == 4
    assert ckpt.tokenizer.chars == "".join(sorted(set(corpus.read_text())))
    raw = path.read_bytes()
    for name, damaged in (("truncated", raw[: len(raw) // 2]), ("garbage", b"\x00" * 64),
                          ("empty", b"")):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(damaged)
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_save_killed_midway_leaves_the_old_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(corpus, out, 4)
    before = (out / "ckpt.safetensors").read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt  # as if the process died between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, out, 8, resume=True)
    assert (out / "ckpt.safetensors").read_bytes() == before
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_existing_run_is_never_overwritten(corpus, tmp_path):
    out = tmp_path / "run"
    run(corpus, out, 4)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match="exists: pass --resume"):
        run(corpus, out, 4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_train_then_sample(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                 "--max-iters", "6", "--sample-tokens", "20", "--norm", "rmsnorm", "--pos", "rope"]) == 0
    printed = capsys.readouterr().out
    assert "val loss" in printed and "sample:" in printed
    assert load_checkpoint(out).config.pos == "rope"
    assert main(["sample", str(out), "--prompt", "All:", "-n", "15", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("All:") and "tokens/s" in captured.err


@pytest.fixture
def trained(corpus, tmp_path):
    out = tmp_path / "trained"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                 "--max-iters", "2", "--sample-tokens", "0"]) == 0
    return out


@pytest.mark.parametrize("argv,message", [
    (["train", "--preset", "tiny", "--n-embd", "30", "--n-head", "4"], "must be divisible by n_head"),
    (["train", "--preset", "huge"], "unknown preset 'huge'; presets: shakespeare-char"),
    (["train", "--preset", "tiny", "--kernels", "attention=magic"], "unknown backend 'magic'"),
    (["sample", "{run}", "--prompt", "Zebra#"], "characters not in the vocabulary: '#Zb'"),
    (["sample", "{run}/../nothing"], "no checkpoint at"),
    (["train", "--out", "{run}", "--resume", "--lr", "1"], "may change, not lr"),
    (["train", "--preset", "tiny", "--device", "gpu"], "device must be auto, cpu, cuda or cuda:N"),
    (["train", "--preset", "tiny", "--lr", "-1"], "lr must be >= 0"),
    (["sample", "{run}", "--temperature", "nan"], "temperature must be >= 0"),
    (["plot", "{run}", "-o", "{run}/no/such/dir/loss.png"], "its folder does not exist"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, trained, capsys):
    argv = [a.replace("{run}", str(trained)) for a in argv]
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mini-llm: error: ") and message in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before


def test_a_torn_metrics_line_is_dropped_and_the_run_resumes(trained, capsys):
    with open(trained / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "it')  # killed mid-write
    assert main(["plot", str(trained), "-o", str(trained / "p.png")]) == 0
    assert main(["train", "--out", str(trained), "--resume", "--max-iters", "3"]) == 0
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 2, 3]


def test_checkpoint_with_damaged_metadata(trained, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"model.w": torch.zeros(2)}, str(bad), metadata={"format": "mini-llm/1", "meta": "{}"})
    with pytest.raises(CheckpointError, match="incomplete or damaged metadata"):
        load_checkpoint(bad)


def test_corrupt_checkpoint_through_the_real_command(trained):
    (trained / "ckpt.safetensors").write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, "-m", "mini_llm.cli", "sample", str(trained)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "not a readable checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(corpus, tmp_path, capsys):
    """--lr 1e9 once wrote NaN checkpoints, a summary.json with a bare NaN and died in the final
    sample; now it stops at the first non-finite loss, one line, exit 2."""
    out = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--lr", "1e9",
                 "--warmup-iters", "0", "--max-iters", "20", "--eval-interval", "2", "--log-interval", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training diverged at iteration" in err[0], err
    assert not (out / "summary.json").exists()
    for line in (out / "metrics.jsonl").read_text().splitlines():  # strict JSON: no NaN
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite {c} in metrics.jsonl"))
    if (out / "ckpt.safetensors").exists():  # saved before the loss broke: finite throughout
        ckpt = load_checkpoint(out)
        assert all(torch.isfinite(t).all() for t in ckpt.model_state.values())
        assert "the last good checkpoint" in err[0]


def test_resuming_past_the_schedule_says_what_the_learning_rate_does(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                 "--max-iters", "4", "--sample-tokens", "0"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "6"]) == 0
    assert "reaches min_lr (0.0001) at iteration 4 and stays there to 6" in capsys.readouterr().out


def test_a_log_piped_to_a_file_shows_progress_between_evaluations(corpus, tmp_path, capsys):
    """Without a terminal the progress bar stays off; each log step is then one plain line."""
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"),
                 "--max-iters", "6", "--eval-interval", "6", "--log-interval", "2", "--sample-tokens", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("iter ")] == ["iter 2", "iter 4", "iter 6"]
