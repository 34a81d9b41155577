"""Pre-tokenization: cut text into the pieces that BPE works inside. No merge ever crosses the
boundary between two pieces, so " dog" and " dog." share the token for " dog".

GPT-2's pattern, alternatives tried in order at each position:
  's 't 're 've 'm 'll 'd   English contractions (lower case only, as in GPT-2)
  ' ?\\p{L}+'               a run of letters, with at most one space in front
  ' ?\\p{N}+'               a run of digits, idem
  ' ?[^\\s\\p{L}\\p{N}]+'     a run of anything else (punctuation, symbols, emoji), idem
  '\\s+(?!\\S)'              whitespace, leaving its last character to the word that follows
  '\\s+'                     whitespace that nothing else took
So "Hello  world!" splits as "Hello", " ", " world", "!".

Special tokens (e.g. <|endoftext|>) are cut out before this pattern runs: they never take part
in a piece, and pieces never span them.
"""

from array import array
from collections import Counter

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2 = regex.compile(GPT2_PATTERN)


def pretokenize(text):
    """The pieces of ordinary text (no special tokens in it), in order: "".join(...) == text."""
    return _GPT2.findall(text)


def count_pretokens(docs):
    """How often each piece occurs in some documents: {piece as UTF-8 bytes: count}.

    concurrent=True lets `regex` drop the GIL while it matches, so threads share the work.
    """
    counts = Counter()
    for doc in docs:
        counts.update(_GPT2.findall(doc, concurrent=True))
    return {piece.encode("utf-8"): n for piece, n in counts.items()}


def special_pattern(special_tokens):
    """A regex that finds special tokens, the longest first where several match at one place
    (so "<|endoftext|><|endoftext|>", if it is a token, is not read as two halves); None if
    there are no special tokens."""
    if not special_tokens:
        return None
    by_length = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(s) for s in by_length))


def split_on_specials(text, pattern):
    """Yield (part, is_special) in order; ordinary parts are never empty."""
    start = 0
    if pattern is not None:
        for m in pattern.finditer(text):
            if m.start() > start:
                yield text[start:m.start()], False
            yield m.group(), True
            start = m.end()
    if start < len(text):
        yield text[start:], False


def char_classes():
    """One byte per code point, 0 other, 1 letter, 2 digit, 3 whitespace, read off the `regex`
    module itself: the C++ pre-tokenizer looks characters up here, so it classifies exactly as
    GPT2_PATTERN does in Python (and as the Unicode tables of this `regex` version do)."""
    table = bytearray(0x110000)
    every_char = array("I", range(0x110000)).tobytes().decode("utf-32", "surrogatepass")
    for code, cls in ((1, r"\p{L}+"), (2, r"\p{N}+"), (3, r"\s+")):
        for m in regex.finditer(cls, every_char):
            table[m.start():m.end()] = bytes([code]) * (m.end() - m.start())
    return bytes(table)
