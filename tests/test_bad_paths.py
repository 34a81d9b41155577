"""Bad output paths and bad inputs across the commands: each is one line on stderr, exit
status 2, and nothing on disk changed (no file replaced, no folder made, no device touched)."""

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mini_llm import files
from mini_llm.checkpoint import FILE_NAME, load_checkpoint
from mini_llm.cli import main
from mini_llm.errors import CheckpointError, OutputError

from conftest import CORPUS

DEV_FULL = Path("/dev/full")
PROC = Path("/proc/self")


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """One tiny run for the whole module (a few seconds); each test gets its own copy."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "corpus.txt").write_text(CORPUS * 30)
    out = folder / "run"
    assert main(["train", "--preset", "tiny", "--data", str(folder / "corpus.txt"), "--out", str(out),
                 "--max-iters", "2", "--sample-tokens", "0"]) == 0
    return out


@pytest.fixture
def trained(trained_once, tmp_path):
    return Path(shutil.copytree(trained_once, tmp_path / "run"))


def snapshot(root):
    """Every path under root, with the bytes of each file."""
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def one_line_error(capsys, message):
    err = capsys.readouterr().err
    assert err.startswith("mini-llm: error: ") and err.count("\n") == 1, err
    assert message in err, err


QUANTIZE = ["quantize", "{run}", "--quant", "int8", "--out"]
CASES = [
    (QUANTIZE + ["{run}/ckpt.safetensors"], "is this command's input"),
    (QUANTIZE + ["{run}/ckpt.safetensors", "--force"], "is this command's input"),
    (QUANTIZE + ["{tmp}/notes.txt"], "exists; pass --force"),
    (QUANTIZE + ["{tmp}/missing_dir/q.safetensors"], "its folder does not exist"),
    (QUANTIZE + ["{tmp}/notes.txt/q.safetensors"], "notes.txt/q.safetensors: Not a directory"),
    (QUANTIZE + ["/dev/full", "--force"], "/dev/full is not a regular file"),
    (["train", "--preset", "tiny", "--data", "{corpus}", "--out", "{tmp}/notes.txt"],
     "notes.txt is not a folder"),
    (["train", "--preset", "tiny", "--data", "{corpus}", "--out", "/proc/x"], "cannot write /proc/x"),
    (["train", "--preset", "tiny", "--data", "{tmp}", "--out", "{tmp}/new"], "is a folder; give a text file"),
    (["tokenizer", "train", "--data", "{corpus}", "--out", "{tmp}/notes.txt"], "notes.txt is not a folder"),
    (["tokenizer", "train", "--data", "{corpus}", "--vocab-size", "260", "--out", "{tmp}/tok"],
     "holds a tokenizer; pass --force"),
    (["bench", "--ops", "layer_norm", "--no-e2e", "--out", "{tmp}/notes.txt"], "notes.txt is not a folder"),
    (["bench", "--ops", "layer_norm", "--no-e2e", "--out", "{tmp}/b", "--json", "/dev/full"],
     "/dev/full is not a regular file"),
    (["bench", "--ops", "", "--out", "{tmp}/b"], "no op named in ''"),
    (["plot", "{run}", "-o", "{tmp}/x.txt"], "give a path ending in .png"),
    (["plot", "{run}", "-o", "/proc/x.png"], "cannot write /proc/x.png"),
    (["plot", "{run}", "-o", "/dev/full"], "/dev/full is not a regular file"),
    (["plot", "{run}", "-o", "{tmp}/old.png"], "exists; pass --force"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_a_bad_output_is_one_line_and_overwrites_nothing(argv, message, trained, corpus, tmp_path, capsys):
    if any("/dev/full" in a for a in argv) and not DEV_FULL.is_char_device():
        pytest.skip("no /dev/full here")
    if any(a.startswith("/proc") for a in argv) and not PROC.is_dir():
        pytest.skip("no /proc here")
    (tmp_path / "notes.txt").write_text("someone's notes\n")
    (tmp_path / "old.png").write_bytes(b"an earlier plot")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "encoder.json").write_text("{}")
    argv = [a.format(run=trained, tmp=tmp_path, corpus=corpus) for a in argv]
    before = snapshot(tmp_path)
    assert main(argv) == 2
    one_line_error(capsys, message)
    assert snapshot(tmp_path) == before
    assert not DEV_FULL.exists() or DEV_FULL.is_char_device()
