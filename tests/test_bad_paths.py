"""Bad output paths and bad inputs across the commands: each is one line on stderr, exit
status 2, and nothing on disk changed (no file replaced, no folder made, no device touched)."""

import errno
import os
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mini_llm import files
from mini_llm import train as train_module
from mini_llm.checkpoint import FILE_NAME, load_checkpoint
from mini_llm.cli import main
from mini_llm.errors import CheckpointError

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
    (["bench", "--ops", "layer_norm", "--no-e2e", "--out", "{tmp}/b", "--json", "{tmp}/notes.txt"],
     "exists; pass --force"),
    (["profile", "--preset", "tiny", "--out", "{tmp}/notes.txt"], "notes.txt is not a folder"),
    (["scaling", "sweep", "--data", "{corpus}", "--budgets", "1e6", "--out", "{tmp}/notes.txt"],
     "notes.txt is not a folder"),
    (["scaling", "fit", "{tmp}/runs.csv", "--out", "/proc/fit"], "cannot write /proc/fit"),
    (["plot", "{run}", "-o", "{tmp}/x.txt"], "give a path ending in .png"),
    (["plot", "{run}", "-o", "/proc/x.png"], "cannot write /proc/x.png"),
    (["plot", "{run}", "-o", "/dev/full"], "/dev/full is not a regular file"),
    (["plot", "{run}", "-o", "{tmp}/old.png"], "exists; pass --force"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[f"{a[0]}: {m}" for a, m in CASES])
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


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_last_checkpoint(
        trained, monkeypatch, capsys):
    real_write_all = files.write_all

    def no_space_for_checkpoints(f, data):
        if FILE_NAME in f.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(f, data)

    monkeypatch.setattr(files, "write_all", no_space_for_checkpoints)
    before = (trained / FILE_NAME).read_bytes()
    assert main(["train", "--out", str(trained), "--resume", "--max-iters", "4"]) == 2
    one_line_error(capsys, f"cannot write {trained / FILE_NAME}: No space left on device")
    assert (trained / FILE_NAME).read_bytes() == before
    assert not list(trained.glob(".*.tmp*"))


def test_temp_files_of_killed_writers_are_removed_and_live_ones_kept(trained):
    dead = trained / f".{FILE_NAME}.tmp999999999"  # above any pid_max: no such process
    alive = trained / f".{FILE_NAME}.tmp{os.getppid()}"  # another writer, still at work
    dead.write_bytes(b"half a checkpoint")
    alive.write_bytes(b"half a checkpoint")
    assert main(["train", "--out", str(trained), "--resume", "--max-iters", "3", "--sample-tokens", "0"]) == 0
    assert not dead.exists() and alive.exists()


def test_a_second_writer_of_a_run_folder_is_refused(trained, capsys):
    before = snapshot(trained)
    with files.lock_folder(trained):  # another run, writing there now
        assert main(["train", "--out", str(trained), "--resume", "--max-iters", "4"]) == 2
        one_line_error(capsys, f"{trained} is in use by another run (pid {os.getpid()})")
    assert snapshot(trained) == before
    assert main(["train", "--out", str(trained), "--resume", "--max-iters", "3", "--sample-tokens", "0"]) == 0


def test_a_run_that_finished_meanwhile_in_the_same_folder_is_not_overwritten(corpus, tmp_path, capsys,
                                                                              monkeypatch):
    """Two fresh runs into one --out: the first finished between the second's checks and its
    lock. The second must not train over the first's checkpoint."""
    out = tmp_path / "run"

    def the_other_run_saved_first(folder):
        out.mkdir(exist_ok=True)
        (out / FILE_NAME).write_bytes(b"the other run's checkpoint")
        return files.lock_folder(folder)

    monkeypatch.setattr(train_module, "lock_folder", the_other_run_saved_first)
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--max-iters", "2",
                 "--sample-tokens", "0"]) == 2
    one_line_error(capsys, "was written by another run since this one started")
    assert (out / FILE_NAME).read_bytes() == b"the other run's checkpoint"


def test_damaged_tensor_bytes_under_a_valid_header_are_refused(trained):
    path = trained / FILE_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor; the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: its tensors do not match the checksum"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_checksum_still_loads(trained):
    path = trained / FILE_NAME
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    del metadata["sha256"]  # as written before checkpoints carried one
    save_file(tensors, path, metadata)
    assert load_checkpoint(path).meta["iter"] == 2


def test_sample_without_a_prompt_starts_from_the_first_token_where_there_is_no_newline(tmp_path, capsys):
    text = tmp_path / "one_line.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(text), "--out", str(run),
                 "--max-iters", "1", "--sample-tokens", "0"]) == 0
    assert main(["sample", str(run), "--num-tokens", "5"]) == 0
    assert "tokens/s" in capsys.readouterr().err


def test_a_bench_script_given_no_run_is_one_line(tmp_path, capsys, monkeypatch):
    from mini_llm.bench import quant_quality, script

    monkeypatch.chdir(tmp_path)
    assert script.run(quant_quality.main, ["--run", "out/shakespeare-char"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: no checkpoint at out/shakespeare-char" in err, err


def test_a_bench_script_writes_under_out_not_into_the_committed_results(corpus, tmp_path, monkeypatch):
    from mini_llm.bench import quant_quality, script

    run = tmp_path / "run"  # 128 wide: every int4 group size of the script divides it
    assert main(["train", "--preset", "tiny", "--n-embd", "128", "--data", str(corpus), "--out", str(run),
                 "--max-iters", "1", "--sample-tokens", "0"]) == 0
    committed = Path(quant_quality.__file__).parent / "results"
    before = snapshot(committed)
    monkeypatch.chdir(tmp_path)
    assert script.run(quant_quality.main, ["--run", str(run)]) == 0
    assert sorted(p.name for p in (tmp_path / script.DEFAULT_OUT).iterdir()) == [
        "quant_quality_2L_128C.json", "quant_quality_2L_128C.md"]
    assert snapshot(committed) == before


def test_a_tokenizer_from_an_empty_file_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert main(["tokenizer", "train", "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "tok")]) == 2
    one_line_error(capsys, "empty.txt is empty: there is no text to learn merges from")
    assert not (tmp_path / "tok").exists()


def test_a_tokenizer_asked_for_more_tokens_than_the_text_allows_says_how_many_it_got(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("to be or not to be")
    assert main(["tokenizer", "train", "--data", str(tmp_path / "short.txt"), "--vocab-size", "100000",
                 "--out", str(tmp_path / "tok")]) == 0
    captured = capsys.readouterr()
    got = int(captured.out.split()[0])  # "N tokens (256 bytes, ...) learned from ..."
    assert got < 100000
    assert f"warning: the text allows only {got} tokens, not the 100000 asked for" in captured.err


def test_a_batch_too_large_for_the_memory_is_refused_before_the_first_step(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                 "--batch-size", "100000000"]) == 2
    one_line_error(capsys, "MiB (predicted, batch 100000000 x 16), but cpu has")
    assert not out.exists()


def test_the_predicted_peak_is_compared_with_the_memory_free(corpus, tmp_path, monkeypatch, capsys):
    from mini_llm.memory import available

    monkeypatch.setattr(available, "available_bytes", lambda device: 1 << 16)  # 64 KiB free
    argv = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "run"),
            "--max-iters", "1", "--sample-tokens", "0"]
    assert main(argv) == 2
    one_line_error(capsys, "but cpu has 0.1 MiB free")
    monkeypatch.setattr(available, "available_bytes", lambda device: 1 << 30)  # the tiny run fits
    assert main(argv) == 0


def test_the_memory_free_on_this_machine_can_be_told():
    from mini_llm.memory import available_bytes

    free = available_bytes("cpu")
    assert free is None or free > 0
