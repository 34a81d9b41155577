"""The byte-level BPE tokenizer: text <-> token ids, loaded from or saved to GPT-2's files.

encode: special tokens are cut out first (longest first), each stretch of ordinary text between
them is pre-tokenized and its pieces merged (backends.py: the Python reference or the C++ core).
decode: the tokens' bytes, joined, read as UTF-8; a byte sequence that is not valid UTF-8
(ids cut in the middle of a character) becomes U+FFFD instead of an error.
"""

from pathlib import Path

from ..errors import DataError
from ..files import fetch
from . import gpt2_format
from .backends import get_backend
from .pretokenize import special_pattern, split_on_specials


class Tokenizer:
    """vocab {id: bytes} of the ordinary tokens, merges [(bytes, bytes)] in rank order,
    special_tokens {text: id}. Ids must be 0..vocab_size-1, each used once."""

    def __init__(self, vocab, merges, special_tokens=None, backend="auto"):
        special_tokens = dict(special_tokens or {})
        ids = sorted([*vocab, *special_tokens.values()])
        if ids != list(range(len(ids))):
            raise DataError("token ids must be 0..vocab_size-1, each used once")
        self.tokens = {token: i for i, token in vocab.items()}  # bytes -> id
        if len(self.tokens) != len(vocab):
            raise DataError("two tokens of the vocabulary have the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in self.tokens]
        if missing:
            raise DataError(f"the vocabulary lacks {len(missing)} of the 256 single bytes")
        if "" in special_tokens:
            raise DataError("a special token cannot be empty")
        merge_ids = []
        for number, (left, right) in enumerate(merges, 1):
            unknown = [t for t in (left, right, left + right) if t not in self.tokens]
            if unknown:
                raise DataError(f"merge {number} ({left!r} + {right!r}) names {unknown[0]!r}, "
                                "which is not a token of the vocabulary")
            merge_ids.append((self.tokens[left], self.tokens[right], self.tokens[left + right]))
        self.merges = list(merges)
        self.special_tokens = special_tokens
        self.id_to_bytes = [b""] * len(ids)
        for token, i in self.tokens.items():
            self.id_to_bytes[i] = token
        for text, i in special_tokens.items():
            self.id_to_bytes[i] = text.encode("utf-8")
        self._specials = special_pattern(special_tokens)
        self._longest_special = max(map(len, special_tokens), default=1)
        self.backend = get_backend(backend)
        self._encoder = self.backend.Encoder(self.tokens, merge_ids)

    @property
    def vocab_size(self):
        return len(self.id_to_bytes)

    # --- encode / decode ------------------------------------------------------------------
    def encode(self, text):
        try:
            return self._encode(text)
        except UnicodeEncodeError:
            # lone surrogates have no UTF-8: as tiktoken does, pair what pairs, the rest -> U+FFFD
            return self._encode(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def _encode(self, text):
        ids = []
        for part, special in split_on_specials(text, self._specials):
            if special:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self._encoder.encode(part))
        return ids

    def decode(self, ids):
        ids = list(ids)
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab_size:
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise DataError(f"token id {bad} is not in the vocabulary (0..{self.vocab_size - 1})")
        return b"".join(self.id_to_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def encode_iterable(self, chunks):
        """Encode a stream of text (e.g. an open file, line by line) lazily, holding only the
        text not yet encoded: the same ids as encode("".join(chunks))."""
        pending = ""
        for chunk in chunks:
            pending += chunk
            done = self._stable_prefix(pending)
            if done:
                yield from self.encode(pending[:done])
                pending = pending[done:]
        yield from self.encode(pending)

    def _stable_prefix(self, text):
        """The length of the longest prefix of `text` whose ids no continuation can change.

        A special token that starts within the last (longest special - 1) characters may still
        grow into a longer one, so it is not final; one that starts before is. Within ordinary
        text, GPT-2's pattern decides where a piece [start, end) ends by looking at most at the
        character after `end` (the lookahead of \\s+(?!\\S); a contraction looks 2 characters
        past its start, which is no further), so a piece followed by 2 known characters of the
        same stretch is final.
        """
        limit = len(text) - self._longest_special + 1  # specials starting before this are final
        done = start = 0
        if self._specials is not None:
            for m in self._specials.finditer(text):
                if m.start() >= limit:
                    break
                done = start = m.end()
        end = start
        for piece in self.backend.pretokenize(text[start:]):
            end += len(piece)
            if end + 2 > limit:
                break
            done = end
        return done

    # --- files ----------------------------------------------------------------------------
    def to_gpt2(self):
        """(encoder {text: id}, merge lines): the contents of GPT-2's two files."""
        vocab = {i: token for token, i in self.tokens.items()}
        return gpt2_format.to_gpt2(vocab, self.merges, self.special_tokens)

    @classmethod
    def from_gpt2(cls, encoder, merge_lines, backend="auto"):
        return cls(*gpt2_format.from_gpt2(encoder, merge_lines), backend=backend)

    def save(self, folder):
        """Write encoder.json and vocab.bpe into `folder`."""
        gpt2_format.write_files(Path(folder), *self.to_gpt2())

    @classmethod
    def load(cls, folder, backend="auto"):
        """Read a folder written by save(), or, by name, "gpt2": GPT-2's own files (from
        $MINI_LLM_DATA_DIR, the cache, or downloaded and checked)."""
        if str(folder) == "gpt2":
            paths = fetch(gpt2_format.GPT2_ENCODER), fetch(gpt2_format.GPT2_MERGES)
        else:
            folder = Path(folder)
            if not folder.is_dir():
                raise DataError(f"no tokenizer folder at {folder} (expected {gpt2_format.ENCODER_FILE} "
                                f"and {gpt2_format.MERGES_FILE}; `mini-llm tokenizer train` writes one)")
            paths = folder / gpt2_format.ENCODER_FILE, folder / gpt2_format.MERGES_FILE
        return cls.from_gpt2(*gpt2_format.read_files(*paths), backend=backend)

    def to_dict(self):
        """What a checkpoint stores to rebuild this tokenizer (JSON)."""
        encoder, lines = self.to_gpt2()
        return {"kind": "bpe", "encoder": encoder, "merges": lines}

    @classmethod
    def from_dict(cls, d):
        return cls.from_gpt2(d["encoder"], d["merges"])
