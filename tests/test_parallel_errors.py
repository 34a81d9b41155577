"""Bad input to a parallel run: each a one-line error that names the rank and the cause,
never a hang and never a torn checkpoint."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mini_llm.checkpoint import load_checkpoint
from mini_llm.cli import main
from mini_llm.errors import ConfigError
from mini_llm.parallel.groups import free_port
from mini_llm.parallel.strategy import split_rows
from mini_llm.train import TrainConfig


def mini_llm(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "mini_llm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_batch_that_does_not_split():
    import torch

    with pytest.raises(ConfigError, match="batch of 5 sequences does not split over 2 ranks"):
        split_rows(torch.zeros(5, 3), 0, 2)


def test_split_batch_needs_equal_slices_and_one_process():
    with pytest.raises(ConfigError, match="--batch-size 12 does not split into 5 equal slices"):
        TrainConfig(batch_size=12, split_batch=5)
    with pytest.raises(ConfigError, match="--split-batch is for one process"):
        TrainConfig(batch_size=12, split_batch=2, parallel="ddp")


def test_port_in_use(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        port = s.getsockname()[1]
        status = main(["train", "--preset", "tiny", "--nproc-per-node", "2", "--parallel", "ddp",
                       "--master-port", str(port)])
    assert status == 2
    assert capsys.readouterr().err.strip() == (f"mini-llm: error: port {port} is in use: pick "
                                               "another --master-port, or leave it out")


def test_global_batch_not_divisible_names_the_rank(corpus, tmp_path):
    proc = mini_llm("train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"),
                    "--batch-size", "3", "--nproc-per-node", "2", "--parallel", "ddp", "--device", "cpu")
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 2
    errors = [line for line in err.splitlines() if line.startswith("mini-llm: error:")]
    assert "mini-llm: error: rank 0: --batch-size 3 (the global batch) does not divide by 2 ranks" in errors
    assert errors[-1].startswith("mini-llm: error: rank ") and "failed: exit code 2" in errors[-1]
    assert not (tmp_path / "run" / "ckpt.safetensors").exists()


def rank_pid(launcher_pid, rank):
    """The pid of the child of `launcher_pid` that torchrun started as `rank`."""
    children = open(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read().split()
    for pid in children:
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_rank_killed_mid_run(corpus, tmp_path):
    """Rank 1 is killed after the first checkpoint: the run stops within seconds, says which rank
    died and how, and the checkpoint rank 0 wrote is whole."""
    out = tmp_path / "run"
    proc = mini_llm("train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                    "--max-iters", "100000", "--eval-interval", "20", "--nproc-per-node", "2",
                    "--parallel", "ddp", "--device", "cpu", env={**os.environ, "MINI_LLM_DIST_TIMEOUT": "30"})
    try:
        deadline = time.monotonic() + 90
        while not (out / "ckpt.safetensors").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
        os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1] == ("mini-llm: error: rank 1 failed: killed by signal SIGKILL; "
                                            "the other ranks were stopped")
    assert load_checkpoint(out).meta["iter"] >= 20


def test_memory_per_rank_needs_a_batch_that_splits(capsys):
    assert main(["memory", "--preset", "tiny", "--device", "cpu", "--parallel", "fsdp", "--ranks", "3"]) == 2
    assert capsys.readouterr().err.strip() == "mini-llm: error: a global batch of 4 does not split over 3 ranks"
    assert main(["memory", "--preset", "tiny", "--device", "cpu", "--parallel", "fsdp", "--ranks", "2"]) == 0
    assert "per rank, fsdp on 2 ranks (gloo)" in capsys.readouterr().out
