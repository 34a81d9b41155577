"""The character tokenizer (as nanoGPT's shakespeare_char), the default before BPE: one token
per distinct character of the training text."""

from ..errors import DataError


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
