"""Examples of variable length: JSON lines in, padded batches with per-sequence lengths out.

Padding is on the right, and no attention mask is needed: under causal attention a real token
at position t sees positions 0..t only, which are all real, and its position ids are those it
has alone. So each sequence's logits at its real positions are the ones it gets alone (up to
float rounding); the padding's own logits are garbage that no loss reads (labels -1 there) and
a reward model reads the last real position. (Left padding would shift the positions and let
real tokens attend to padding: it would need a key-padding mask in every attention backend.)
Batched generation needs prompts of one length; evaluate.py samples each prompt's answers as
one batch, so it never pads a prompt.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..tokenizer.chat import chat_template

IGNORE = -1  # a label no loss reads (the model's cross_entropy ignores -1)


def read_jsonl(path, fields):
    """[(where, row)]: each line of `path` as a dict with the string `fields` (others kept as
    they are), `where` being "path:line". Every line is checked before anything uses one, and
    an error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no data file at {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for name in fields:
                if not isinstance(row.get(name), str):
                    raise DataError(f"{path}:{number}: needs a string {name!r}")
            rows.append((f"{path}:{number}", row))
    if not rows:
        raise DataError(f"{path} holds no examples")
    return rows


@dataclass
class Encoded:
    """One prompt and one response as ids: the model reads prompt + response."""

    prompt: list
    response: list  # ends with the end-of-turn token

    @property
    def ids(self):
        return self.prompt + self.response


def encode_turn(tokenizer, prompt, response, block_size, where, truncate=False):
    """A turn in the chat format, checked against the context. `truncate` keeps the end of a
    long prompt and the start of a long response (at least a quarter of the context) instead
    of refusing them; `where` ("file:line") names the example in errors."""
    if not response.strip():
        raise DataError(f"{where}: the response is empty")
    p = tokenizer.encode(chat_template(prompt))
    r = tokenizer.encode(response) + [tokenizer.end_id]  # the markers split: same ids as the whole turn
    if len(p) + len(r) > block_size:
        if not truncate:
            what = f"the prompt takes {len(p)}" if len(p) >= block_size else \
                f"prompt and response take {len(p) + len(r)}"
            raise DataError(f"{where}: {what} tokens, more than the context of {block_size} "
                            "(--truncate cuts them)")
        keep_r = max(block_size // 4, block_size - len(p))
        r = r[:keep_r]
        p = p[len(p) - (block_size - len(r)):]
    return Encoded(p, r)


def pad(sequences, pad_id=0):
    """(B, T) ids padded on the right to the longest, and (B,) lengths."""
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s)
    return ids, lengths


def response_labels(examples, width):
    """(B, width) next-token labels: position t holds the token at t + 1 where that token is
    part of the response, IGNORE elsewhere (prompt, padding), so losses read the response only."""
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        start = len(e.prompt) - 1  # the position whose next token is the response's first
        labels[row, start : start + len(e.response)] = torch.tensor(e.response)
    return labels


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T) right-padded
    lengths: torch.Tensor  # (B,) real tokens per row
    labels: torch.Tensor  # (B, T) response tokens as next-token labels, IGNORE elsewhere

    def to(self, device):
        return Batch(self.ids.to(device), self.lengths.to(device), self.labels.to(device))


def collate(examples):
    ids, lengths = pad([e.ids for e in examples])
    return Batch(ids, lengths, response_labels(examples, ids.size(1)))


def collate_pairs(pairs):
    """One batch of 2B sequences for B (chosen, rejected) pairs: the chosen first, so a
    per-sequence result splits with .chunk(2) (TRL's concatenated forward)."""
    return collate([c for c, _ in pairs] + [r for _, r in pairs])


def pick(n_examples, batch_size, generator):
    """Indices of a random batch (with replacement across batches, not within one)."""
    return torch.randperm(n_examples, generator=generator)[:batch_size].tolist()
