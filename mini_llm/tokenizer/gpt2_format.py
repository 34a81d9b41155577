"""GPT-2's two tokenizer files, read and written: encoder.json and vocab.bpe.

encoder.json maps each token, written as text, to its id; vocab.bpe lists the merges in rank
order, one "left right" per line after a "#version: 0.2" header. Tokens are bytes, and JSON and
a space-separated list need printable text, so GPT-2 writes each byte as one printable
character (bytes_to_unicode): printable Latin-1 bytes stand for themselves, the others (space,
newline, control bytes...) are moved to characters from U+0100 on; the space becomes "Ġ", so
" the" is written "Ġthe".

Special tokens (GPT-2 has one, <|endoftext|> = 50256) are in encoder.json as they are written,
and are no merge's result: that is how they are told apart when the files are read.
"""

import json
from functools import cache

from ..errors import DataError
from ..files import RemoteFile, atomic_write_bytes

# GPT-2's own files where OpenAI serves them (tiktoken fetches the same URLs, same sha256).
GPT2_ENCODER = RemoteFile(
    "gpt2_encoder.json",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
)
GPT2_MERGES = RemoteFile(
    "gpt2_vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)
ENCODER_FILE = "encoder.json"
MERGES_FILE = "vocab.bpe"
HEADER = "#version: 0.2"


@cache
def bytes_to_unicode():
    """{byte: printable character}, GPT-2's table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    moved = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + moved)
            moved += 1
    return table


@cache
def _spelling_to_byte():
    """For str.translate: each printable character -> its byte; every other character below 256
    -> U+FFFF, which latin-1 cannot encode, so that what is no spelling fails below."""
    table = dict.fromkeys(range(256), 0xFFFF)
    table.update({ord(ch): b for b, ch in bytes_to_unicode().items()})
    return table


def token_text(token):
    """bytes -> GPT-2's printable spelling."""
    return token.decode("latin-1").translate(bytes_to_unicode())


def token_bytes(text):
    """GPT-2's printable spelling -> bytes; None if `text` is not such a spelling."""
    try:
        return text.translate(_spelling_to_byte()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def to_gpt2(vocab, merges, special_tokens):
    """vocab {id: bytes}, merges [(bytes, bytes)], special_tokens {text: id}
    -> (encoder {text: id}, merge lines)."""
    encoder = {token_text(token): i for i, token in vocab.items()}
    for text, i in special_tokens.items():
        if text in encoder:
            raise DataError(f"special token {text!r} is spelt like an ordinary token")
        encoder[text] = i
    lines = [f"{token_text(left)} {token_text(right)}" for left, right in merges]
    return encoder, lines


def from_gpt2(encoder, merge_lines):
    """(encoder {text: id}, merge lines) -> (vocab {id: bytes}, merges [(bytes, bytes)],
    special_tokens {text: id}). A merges line that names a token the encoder lacks, or whose
    result it lacks, is an error; so is an encoder without all 256 single bytes."""
    merges = []
    ordinary = {token_text(bytes([b])) for b in range(256)}
    missing = sorted(ordinary - encoder.keys())
    if missing:
        raise DataError(f"the vocabulary lacks {len(missing)} of the 256 single bytes, e.g. {missing[0]!r}")
    for number, line in enumerate(merge_lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"merges line {number} is not two tokens separated by a space: {line!r}")
        for text in (*parts, parts[0] + parts[1]):
            if text not in encoder or token_bytes(text) is None:
                raise DataError(f"merges line {number} ({line!r}) names {text!r}, "
                                "which is not a token of the vocabulary")
            ordinary.add(text)
        merges.append((token_bytes(parts[0]), token_bytes(parts[1])))
    vocab = {i: token_bytes(text) for text, i in encoder.items() if text in ordinary}
    special_tokens = {text: i for text, i in encoder.items() if text not in ordinary}
    return vocab, merges, special_tokens


def write_files(folder, encoder, merge_lines):
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / ENCODER_FILE, json.dumps(encoder, ensure_ascii=False).encode())
    atomic_write_bytes(folder / MERGES_FILE, "\n".join([HEADER, *merge_lines, ""]).encode())


def read_files(encoder_path, merges_path):
    try:
        encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise DataError(f"cannot read the tokenizer files: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{encoder_path} or {merges_path} is not a tokenizer file: {e}") from None
    if not isinstance(encoder, dict) or not all(isinstance(i, int) for i in encoder.values()):
        raise DataError(f"{encoder_path} is not a JSON object of token -> id")
    return encoder, lines
