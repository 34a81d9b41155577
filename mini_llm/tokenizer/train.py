"""Training a byte-level BPE tokenizer on a text.

  1. Cut the text at its special tokens: they are kept out of training (no merge ever reaches
     into one) and get ids of their own after the merges, as <|endoftext|> does in GPT-2.
  2. Pre-tokenize the documents between them and count each distinct piece. This is the only
     pass over the whole text, so it runs in parallel: the documents are dealt into one chunk
     per worker thread, and both backends let go of the GIL while they match.
  3. Learn merges from the distinct pieces and their counts (trainer.py) until the vocabulary
     holds vocab_size tokens: 256 bytes + merges + special tokens.
"""

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError
from .backends import get_backend
from .pretokenize import special_pattern, split_on_specials
from .tokenizer import Tokenizer

DEFAULT_SPECIALS = ("<|endoftext|>",)


def chunks(docs, n):
    """Deal documents, in order, into at most n groups of about equal length."""
    total = sum(map(len, docs))
    groups, current, size = [], [], 0
    for doc in docs:
        current.append(doc)
        size += len(doc)
        if size >= total * (len(groups) + 1) / n:
            groups.append(current)
            current = []
    return groups + [current] if current else groups


def count_words(text, special_tokens, backend, workers):
    """{piece bytes: count} over the text, special tokens cut out."""
    docs = [part for part, special in split_on_specials(text, special_pattern(special_tokens))
            if not special]
    groups = chunks(docs, workers)
    with ThreadPoolExecutor(max(1, len(groups))) as pool:
        counts = Counter()
        for group_counts in pool.map(backend.count_pretokens, groups):
            counts.update(group_counts)
    return counts


def train_bpe(text, vocab_size, special_tokens=DEFAULT_SPECIALS, backend="auto", workers=None,
              progress=False):
    """Learn a tokenizer of vocab_size tokens (256 bytes + merges + special_tokens) from text.
    Fewer merges are learned if every piece of the text has become a single token first."""
    special_tokens = list(dict.fromkeys(special_tokens))  # without repeats, in order
    if vocab_size < 256 + len(special_tokens):
        raise DataError(f"vocab_size {vocab_size} is too small: 256 byte tokens + "
                        f"{len(special_tokens)} special tokens need at least {256 + len(special_tokens)}")
    impl = get_backend(backend)
    counts = count_words(text, special_tokens, impl, workers or os.cpu_count() or 1)
    trainer = impl.Trainer(dict(counts))
    merges, size = [], 256  # tokens so far
    with tqdm(total=vocab_size - len(special_tokens) - size, unit="token",
              disable=None if progress else True) as bar:  # None: shown on a terminal
        while size < vocab_size - len(special_tokens):
            step = trainer.merge_next()
            if step is None:
                break
            merges.append(step)
            if step[2] == size:  # a new token (not one that already had these bytes)
                size += 1
                bar.update(1)
    vocab = dict(enumerate(trainer.vocab))
    specials = {s: len(vocab) + k for k, s in enumerate(special_tokens)}
    return Tokenizer(vocab, [(vocab[a], vocab[b]) for a, b, _ in merges], specials, backend=backend)


def train_bpe_file(path, vocab_size, special_tokens=DEFAULT_SPECIALS, **kwargs):
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: byte {e.start} is {raw[e.start:e.start + 1]!r}") from None
    if not text:
        raise DataError(f"{path} is empty: there is no text to learn merges from")
    return train_bpe(text, vocab_size, special_tokens, **kwargs)
