"""`mini-llm tokenizer train`, and the mini-LLM trained and sampled on BPE tokens."""

import json

import pytest

from mini_llm.checkpoint import Checkpoint, load_checkpoint
from mini_llm.cli import main
from mini_llm.tokenizer import CharTokenizer
from mini_llm.tokenizer import Tokenizer


@pytest.fixture
def bpe(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(corpus), "--vocab-size", "300", "--out", str(out)]) == 0
    assert "300 tokens (256 bytes, 43 merges, 1 special)" in capsys.readouterr().out
    return out


def test_train_and_sample_on_bpe_tokens(corpus, bpe, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(corpus), "--tokenizer", str(bpe), "--out", str(out),
            "--sample-tokens", "5"]
    assert main([*argv, "--max-iters", "4"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.config.vocab_size == 300 and ckpt.meta["tokenizer"]["kind"] == "bpe"
    assert ckpt.tokenizer.to_dict() == Tokenizer.load(bpe).to_dict()  # the run carries its tokenizer
    assert main(["train", "--out", str(out), "--data", str(corpus), "--resume", "--max-iters", "6"]) == 0
    assert load_checkpoint(out).meta["iter"] == 6
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "Zebra # naïve", "-n", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Zebra # naïve")  # bytes: any prompt encodes


def test_checkpoints_from_before_bpe_still_load():
    old = Checkpoint({}, None, {"tokenizer": {"chars": "\n !ab"}})  # no "kind": characters
    assert isinstance(old.tokenizer, CharTokenizer) and old.tokenizer.encode("ab!") == [3, 4, 2]


@pytest.mark.parametrize("argv,message", [
    (["tokenizer", "train", "--data", "{corpus}", "--vocab-size", "200"], "vocab_size 200 is too small"),
    (["tokenizer", "train", "--data", "{latin1}"], "is not UTF-8 text: byte 3"),
    (["train", "--preset", "tiny", "--data", "{corpus}", "--tokenizer", "{bad}"], "names 'Ġzebra'"),
    (["train", "--preset", "tiny", "--data", "{corpus}", "--tokenizer", "{corpus}"], "no tokenizer folder"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, corpus, bpe, tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1") * 20)
    merges = bpe / "vocab.bpe"
    merges.write_text(merges.read_text() + "Ġzebra Ġquux\n")
    paths = {"{corpus}": corpus, "{latin1}": latin1, "{bad}": bpe}
    assert main([str(paths.get(a, a)) for a in argv] + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mini-llm: error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_tokenizer_files_are_gpt2_style(bpe):
    encoder = json.loads((bpe / "encoder.json").read_text())
    assert encoder["<|endoftext|>"] == 299 and encoder["Ġ"] == ord(" ") and encoder["!"] == ord("!")
