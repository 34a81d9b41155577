"""Data: find or download a text, encode it (as characters, or with a BPE tokenizer from
mini_llm.tokenizer), and serve random training windows.

Where the text comes from, first match wins:
  1. an explicit path (`--data PATH`): any UTF-8 text file, used as is;
  2. $MINI_LLM_DATA_DIR/<file name>: a folder of local copies (CI points it at ../shared/data);
  3. the cache, $MINI_LLM_CACHE_DIR or ~/.cache/mini_llm: downloaded earlier, sha256 checked;
  4. a download from the canonical URL, checked against its sha256 before it enters the cache.

Encoded ids are written once as uint16 arrays (train.bin, val.bin) and memory-mapped, so a
large corpus never has to fit in memory and every run after the first starts at once.
"""

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str


TINY_SHAKESPEARE = RemoteFile(
    "tinyshakespeare.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)

DATA_DIR_VAR = "MINI_LLM_DATA_DIR"
CACHE_DIR_VAR = "MINI_LLM_CACHE_DIR"
HOW_TO_POINT = f"pass --data PATH, or set {DATA_DIR_VAR} to a folder holding"


def cache_dir():
    return Path(os.environ.get(CACHE_DIR_VAR) or Path.home() / ".cache" / "mini_llm")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path, data):
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left if the rename did not happen


def fetch(remote, path=None):
    """Return a local path to `remote`'s file, downloading it into the cache if need be."""
    if path is not None:
        if not Path(path).is_file():
            raise DataError(f"data file {path} does not exist")
        return Path(path)
    if os.environ.get(DATA_DIR_VAR):
        local = Path(os.environ[DATA_DIR_VAR]) / remote.name
        if not local.is_file():
            raise DataError(f"{DATA_DIR_VAR}={os.environ[DATA_DIR_VAR]} has no {remote.name}")
        return local
    cached = cache_dir() / remote.name
    if cached.is_file() and sha256_of(cached) == remote.sha256:
        return cached
    try:
        with urllib.request.urlopen(remote.url, timeout=30) as response:
            payload = response.read()
    except OSError as e:
        raise DataError(
            f"could not download {remote.name} from {remote.url} ({getattr(e, 'reason', e)}); "
            f"{HOW_TO_POINT} {remote.name}"
        ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != remote.sha256:
        raise DataError(f"{remote.url} sent a file with sha256 {digest}, expected {remote.sha256}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, payload)
    return cached


class CharTokenizer:
    """One token per distinct character of the training text, ids in sorted order."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise DataError(
                f"characters not in the vocabulary: {''.join(unknown)!r} "
                f"(the model knows {self.vocab_size}: {self.chars!r})"
            )
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def to_dict(self):
        return {"kind": "char", "chars": self.chars}


def tokenizer_from_dict(d):
    """Rebuild a tokenizer from its to_dict(): characters, or BPE (mini_llm.tokenizer). Records
    written before BPE existed have no "kind" and are characters."""
    if d.get("kind", "char") == "char":
        return CharTokenizer(d["chars"])
    if d["kind"] == "chat":  # a tokenizer with chat markers (mini_llm.align.chat)
        from .align.chat import ChatTokenizer

        return ChatTokenizer.from_dict(d)
    from .tokenizer import Tokenizer  # here, not on top: mini_llm.tokenizer imports this module

    return Tokenizer.from_dict(d)


@dataclass
class TokenDataset:
    train: np.ndarray  # uint16 memmap of token ids
    val: np.ndarray
    tokenizer: object  # CharTokenizer or mini_llm.tokenizer.Tokenizer


def prepare_dataset(text_path, tokenizer=None, val_fraction=0.1):
    """Encode a text with `tokenizer`, or as characters if None; first 90% train, last 10%
    validation (as nanoGPT)."""
    raw = Path(text_path).read_bytes()
    key = hashlib.sha256(raw)
    key.update(repr(val_fraction).encode())
    if tokenizer is not None:  # the same text under another tokenizer is another dataset
        key.update(json.dumps(tokenizer.to_dict(), sort_keys=True).encode())
    folder = cache_dir() / "prepared" / key.hexdigest()[:16]
    vocab_file = folder / "vocab.json"
    if not vocab_file.is_file():
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{text_path} is not UTF-8 text ({e})") from None
        if len(text) < 100:
            raise DataError(f"{text_path} is too short to train on ({len(text)} characters)")
        tok = tokenizer or CharTokenizer(sorted(set(text)))
        if tok.vocab_size > np.iinfo(np.uint16).max + 1:  # ids 0..65535 fit in uint16
            raise DataError(f"{text_path} needs {tok.vocab_size} token ids, over 65535")
        ids = np.array(tok.encode(text), dtype=np.uint16)
        n_train = int(len(ids) * (1 - val_fraction))
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "train.bin", ids[:n_train].tobytes())
        atomic_write_bytes(folder / "val.bin", ids[n_train:].tobytes())
        atomic_write_bytes(vocab_file, json.dumps(tok.to_dict()).encode())  # last: marks done
    tok = tokenizer or tokenizer_from_dict(json.loads(vocab_file.read_text()))
    train = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(folder / "val.bin", dtype=np.uint16, mode="r")
    return TokenDataset(train, val, tok)


def get_batch(ids, batch_size, block_size, generator):
    """Random windows: x (B, T) and y (B, T), y being x shifted left by one token."""
    if len(ids) <= block_size:
        raise DataError(f"the split has {len(ids)} tokens, fewer than block_size + 1")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([ids[i : i + block_size] for i in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([ids[i + 1 : i + 1 + block_size] for i in starts]).astype(np.int64))
    return x, y
