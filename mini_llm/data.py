"""Data: encode a text (as characters, or with a BPE tokenizer from mini_llm.tokenizer) and
serve random training windows. The text is any UTF-8 file, or TINY_SHAKESPEARE found or
downloaded by mini_llm.files.fetch.

Encoded ids are written once as uint16 arrays (train.bin, val.bin) and memory-mapped, so a
large corpus never has to fit in memory and every run after the first starts at once.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .files import RemoteFile, atomic_write_bytes, cache_dir
from .tokenizer import CharTokenizer, tokenizer_from_dict

TINY_SHAKESPEARE = RemoteFile(
    "tinyshakespeare.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)


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
