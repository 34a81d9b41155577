"""Finding, downloading and encoding the data."""

import hashlib
import io
import urllib.error

import numpy as np
import pytest
import torch

from mini_llm import files
from mini_llm.data import TINY_SHAKESPEARE, get_batch, prepare_dataset
from mini_llm.errors import DataError
from mini_llm.files import RemoteFile, fetch
from mini_llm.tokenizer import CharTokenizer

PAYLOAD = b"to be or not to be\n" * 20
REMOTE = RemoteFile("t.txt", "https://example.invalid/t.txt", hashlib.sha256(PAYLOAD).hexdigest())


def serve(monkeypatch, payload=PAYLOAD, fail=None):
    calls = []

    def urlopen(url, timeout):
        calls.append(url)
        if fail:
            raise fail
        return io.BytesIO(payload)

    monkeypatch.setattr(files.urllib.request, "urlopen", urlopen)
    return calls


def test_download_is_checked_and_cached(monkeypatch, tmp_path):
    calls = serve(monkeypatch)
    path = fetch(REMOTE)
    assert path == tmp_path / "cache" / "t.txt" and path.read_bytes() == PAYLOAD
    assert fetch(REMOTE) == path and len(calls) == 1  # the second call reads the cache
    assert [p.name for p in path.parent.iterdir()] == ["t.txt"]  # no temporary file left


def test_a_corrupt_download_is_refused(monkeypatch, tmp_path):
    serve(monkeypatch, payload=b"<html>rate limited</html>")
    with pytest.raises(DataError, match="expected " + REMOTE.sha256):
        fetch(REMOTE)
    assert not (tmp_path / "cache" / "t.txt").exists()


def test_no_network_is_one_clear_line(monkeypatch):
    serve(monkeypatch, fail=urllib.error.URLError("Name or service not known"))
    with pytest.raises(DataError) as e:
        fetch(TINY_SHAKESPEARE)
    message = str(e.value)
    assert "\n" not in message and "Name or service not known" in message
    assert "--data PATH" in message and "MINI_LLM_DATA_DIR" in message


def test_local_overrides_come_first(monkeypatch, tmp_path):
    calls = serve(monkeypatch)
    own = tmp_path / "own.txt"
    own.write_text("my own text")
    assert fetch(REMOTE, own) == own
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "t.txt").write_bytes(PAYLOAD)
    monkeypatch.setenv("MINI_LLM_DATA_DIR", str(folder))
    assert fetch(REMOTE) == folder / "t.txt" and calls == []
    with pytest.raises(DataError, match="does not exist"):
        fetch(REMOTE, tmp_path / "missing.txt")
    monkeypatch.setenv("MINI_LLM_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="has no t.txt"):
        fetch(REMOTE)


def test_char_dataset_split_and_memmap(corpus):
    ds = prepare_dataset(corpus)
    text = corpus.read_text()
    assert ds.tokenizer.chars == "".join(sorted(set(text)))
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.uint16
    n_train = int(len(text) * 0.9)
    assert len(ds.train) == n_train and len(ds.val) == len(text) - n_train
    assert ds.tokenizer.decode(ds.train.tolist()) + ds.tokenizer.decode(ds.val.tolist()) == text
    assert prepare_dataset(corpus).tokenizer.chars == ds.tokenizer.chars  # cached


def test_bad_text_files(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    with pytest.raises(DataError, match="is not UTF-8"):
        prepare_dataset(latin1)
    short = tmp_path / "short.txt"
    short.write_text("hi")
    with pytest.raises(DataError, match="too short"):
        prepare_dataset(short)


def test_tokenizer_names_unknown_characters():
    tok = CharTokenizer("abc ")
    assert tok.decode(tok.encode("a cab")) == "a cab"
    with pytest.raises(DataError, match=r"not in the vocabulary: 'xz'"):
        tok.encode("zax")


def test_batches_are_shifted_windows():
    ids = np.arange(100, dtype=np.uint16)
    x, y = get_batch(ids, 5, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
