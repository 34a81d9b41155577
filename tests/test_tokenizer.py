"""The BPE tokenizer on small texts: training against a naive reference trainer, special tokens,
decode, streaming, files, bad input; every check on both backends (pure Python and C++)."""

import os
from collections import Counter

import pytest
import regex
from hypothesis import given, settings, strategies as st

from conftest import CORPUS
from mini_llm.errors import ConfigError, DataError
from mini_llm.tokenizer import Tokenizer, train_bpe, train_bpe_file
from mini_llm.tokenizer.backends import _bpe_core, get_backend
from mini_llm.tokenizer.pretokenize import GPT2_PATTERN

# The C++ core must be built where CI runs; elsewhere (no compiler) its tests skip, saying why.
CPP = pytest.param("cpp", marks=pytest.mark.skipif(
    _bpe_core is None and not os.environ.get("CI"),
    reason="the C++ core (mini_llm.tokenizer._bpe_core) is not built: no C++ compiler at install"))
BACKENDS = ["python", CPP]
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
# Text that exercises every branch of GPT-2's pattern: contractions, spaces before words,
# digits, symbols, runs of whitespace, non-ASCII letters and digits, emoji, special-token halves.
TRICKY = st.lists(st.sampled_from([*"ab zé\n\t'sltdmrv1٣.!😀", "<|", "|>", "endoftext", "  ", "\u3000"]),
                  max_size=60).map("".join)
SPECIALS = ["<|endoftext|>"]


def reference_train(text, vocab_size, special_tokens):
    """The straightforward trainer: recount every pair of every word before each merge."""
    docs = regex.split("|".join(map(regex.escape, special_tokens)), text) if special_tokens else [text]
    words = Counter(tuple(bytes([b]) for b in piece.encode())
                    for doc in docs for piece in regex.findall(GPT2_PATTERN, doc))
    vocab, merges = {bytes([b]) for b in range(256)}, []
    while len(vocab) < vocab_size - len(special_tokens):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties: the greatest pair of byte strings
        merges.append(best)
        vocab.add(best[0] + best[1])
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


@pytest.fixture(scope="module")
def trained():
    """One small tokenizer per backend, trained on the Shakespeare-like corpus."""
    text = (CORPUS + "<|endoftext|>") * 5 + "naïve café, 2024 — 😀 ok"
    return {b: train_bpe(text, 400, SPECIALS, backend=b) for b in ("python", "cpp") if
            b == "python" or _bpe_core is not None}


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_matches_the_naive_reference(backend):
    text = (CORPUS + "<|endoftext|>") * 3 + "aaaa aaaa aaaaaa abab ab-ab 1234 1234"
    tok = train_bpe(text, 256 + 80 + 1, SPECIALS, backend=backend, workers=2)
    assert tok.merges == reference_train(text, 256 + 80 + 1, SPECIALS)
    assert len(tok.merges) == 80 and tok.vocab_size == 337
    assert tok.special_tokens == {"<|endoftext|>": 336}  # after the 256 bytes and the merges


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_greatest_pair(backend):
    # (a,b), (" ",c) and (c,d) all occur twice: (b"c", b"d") is the greatest
    assert train_bpe("ab ab cd cd", 257, [], backend=backend).merges == [(b"c", b"d")]


@given(text=TRICKY)
@SETTINGS
def test_backends_train_alike_on_random_text(text):
    if _bpe_core is None:
        pytest.skip("the C++ core is not built")
    python = train_bpe(text, 300, SPECIALS, backend="python", workers=1)
    assert python.merges == reference_train(text, 300, SPECIALS)
    assert train_bpe(text, 300, SPECIALS, backend="cpp", workers=2).merges == python.merges


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_is_deterministic_and_stops_when_nothing_is_left(backend):
    a = train_bpe(CORPUS * 4, 600, SPECIALS, backend=backend, workers=1)
    b = train_bpe(CORPUS * 4, 600, SPECIALS, backend=backend, workers=2)
    assert a.merges == b.merges and a.to_dict() == b.to_dict()
    # this corpus runs out of pairs long before 600: every piece is then one token
    assert a.vocab_size < 600 and all(len(a.encode(w)) == 1 for w in regex.findall(GPT2_PATTERN, CORPUS))


@given(text=TRICKY)
@SETTINGS
def test_pieces_are_identical_on_both_backends(text):
    if _bpe_core is None:
        pytest.skip("the C++ core is not built")
    assert get_backend("cpp").pretokenize(text) == regex.findall(GPT2_PATTERN, text)


@given(text=TRICKY)
@SETTINGS
def test_encode_is_identical_on_both_backends_and_round_trips(trained, text):
    python = trained["python"].encode(text)
    assert trained["python"].decode(python) == text
    if "cpp" in trained:
        assert trained["cpp"].encode(text) == python


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_tokens_are_whole_and_longest_first(trained, backend):
    tok = trained[backend]
    assert not any(b"<|endoftext|>" in t or b"endoftext|>" in t for t in tok.tokens)  # never merged
    eot = tok.special_tokens["<|endoftext|>"]
    ids = tok.encode("Speak.<|endoftext|>All:")
    assert ids.count(eot) == 1 and tok.decode(ids) == "Speak.<|endoftext|>All:"
    assert tok.encode("<|endoftext|>") == [eot] and tok.encode("<|endoftext|") != [eot]
    vocab = {i: t for t, i in tok.tokens.items()}
    double = Tokenizer(vocab, tok.merges, {"<|endoftext|>": eot, "<|endoftext|><|endoftext|>": eot + 1},
                       backend=backend)
    assert double.encode("<|endoftext|>" * 3) == [eot + 1, eot]


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_replaces_invalid_utf8_and_refuses_unknown_ids(trained, backend):
    tok = trained[backend]
    u = tok.encode("ü")
    assert len(u) == 2  # "ü" is two bytes, never merged in training: cut them apart
    assert tok.decode(u[:1]) == "\ufffd" and tok.decode(u[:1] + u) == "\ufffdü"
    with pytest.raises(DataError, match="token id 9999 is not in the vocabulary"):
        tok.decode([1, 9999])
    with pytest.raises(DataError, match="token id -1"):
        tok.decode([-1])


@given(text=TRICKY, cuts=st.lists(st.integers(0, 60), max_size=6))
@SETTINGS
def test_encode_iterable_equals_encode_however_the_text_is_cut(trained, text, cuts):
    tok = trained["cpp" if "cpp" in trained else "python"]
    cuts = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(tok.encode_iterable(chunks)) == tok.encode(text)


def test_encode_iterable_streams(trained):
    tok = trained["python"]
    read = []

    def lines():
        for i in range(10_000):
            read.append(i)
            yield f"line {i}: Speak, speak.\n"

    stream = tok.encode_iterable(lines())
    first = [next(stream) for _ in range(20)]
    assert len(read) < 10  # only the lines that were needed so far were read
    assert first == tok.encode("".join(f"line {i}: Speak, speak.\n" for i in range(10)))[:20]


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip_in_gpt2_format(trained, backend, tmp_path):
    tok = trained[backend]
    tok.save(tmp_path)
    lines = (tmp_path / "vocab.bpe").read_text().splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + len(tok.merges)
    assert "Ġ a" in lines and not any(" " in text for text in tok.to_gpt2()[0])  # " " is "Ġ"
    again = Tokenizer.load(tmp_path, backend=backend)
    assert again.to_dict() == tok.to_dict() and again.special_tokens == tok.special_tokens
    text = CORPUS + "<|endoftext|> naïve 😀"
    assert again.encode(text) == tok.encode(text)


def test_bad_files_are_clear_errors(trained, tmp_path):
    trained["python"].save(tmp_path)
    merges = tmp_path / "vocab.bpe"
    merges.write_text(merges.read_text() + "Ġzebra Ġquux\n")
    with pytest.raises(DataError, match=r"merges line \d+ \('Ġzebra Ġquux'\) names 'Ġzebra'.*not a token"):
        Tokenizer.load(tmp_path)
    merges.write_text("#version: 0.2\none two three\n")
    with pytest.raises(DataError, match="not two tokens separated by a space"):
        Tokenizer.load(tmp_path)
    (tmp_path / "encoder.json").write_text('{"a": 0}')
    with pytest.raises(DataError, match="lacks 255 of the 256 single bytes"):
        Tokenizer.load(tmp_path)
    (tmp_path / "encoder.json").write_text("[1, 2")
    with pytest.raises(DataError, match="is not a tokenizer file"):
        Tokenizer.load(tmp_path)
    with pytest.raises(DataError, match="no tokenizer folder"):
        Tokenizer.load(tmp_path / "missing")


def test_bad_training_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="vocab_size 256 is too small: .* need at least 257"):
        train_bpe("some text", 256, SPECIALS)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"is not UTF-8 text: byte 3 is b'\\xe9'"):
        train_bpe_file(latin1, 300)
    with pytest.raises(ConfigError, match="unknown tokenizer backend 'rust'"):
        train_bpe("some text", 300, backend="rust")
