"""GPT-2's own vocabulary and merges, loaded by our tokenizer, against tiktoken's GPT-2 encoding
built offline from the same two files: identical ids on real text and on random Unicode."""

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mini_llm.tokenizer import Tokenizer
from mini_llm.tokenizer.backends import _bpe_core
from mini_llm.tokenizer.encoder import Encoder
from mini_llm.tokenizer.gpt2_format import token_bytes
from mini_llm.tokenizer.pretokenize import GPT2_PATTERN

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is a test dependency: pip install -e '.[dev]'")

# Read before conftest's fixture clears it for each test.
DATA = os.environ.get("MINI_LLM_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA, reason="needs GPT-2's files and the texts: set MINI_LLM_DATA_DIR "
                                "to a folder holding them (CI: ../shared/data)")
BACKENDS = ["python", "cpp"] if _bpe_core is not None else ["python"]


@pytest.fixture(scope="module")
def ours():
    os.environ["MINI_LLM_DATA_DIR"] = DATA  # Tokenizer.load("gpt2") finds the files there
    try:
        return {b: Tokenizer.load("gpt2", backend=b) for b in BACKENDS}
    finally:
        del os.environ["MINI_LLM_DATA_DIR"]


@pytest.fixture(scope="module")
def reference():
    """tiktoken's GPT-2 encoding, from the same files: ranks are the token ids."""
    encoder = json.loads((Path(DATA) / "gpt2_encoder.json").read_text())
    ranks = {token_bytes(text): i for text, i in encoder.items() if text != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": encoder["<|endoftext|>"]})


@pytest.mark.parametrize("name", ["tinyshakespeare.txt", "tinystories_2MiB.txt"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_to_tiktoken_on_real_text(ours, reference, name, backend):
    text = (Path(DATA) / name).read_text(encoding="utf-8")
    ids = ours[backend].encode(text)
    assert ids == reference.encode(text, allowed_special="all")
    assert ours[backend].decode(ids) == text


@given(text=st.text(max_size=200))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_identical_to_tiktoken_on_random_unicode(ours, reference, text):
    expected = reference.encode(text, allowed_special="all")
    for tok in ours.values():
        ids = tok.encode(text)
        assert ids == expected
        assert tok.decode(ids) == text


def test_lone_surrogates_are_replaced_as_tiktoken_does(ours, reference):
    text = "a\ud800b \ud83d\ude00"  # a lone surrogate, then a pair that makes 😀
    for tok in ours.values():
        assert tok.encode(text) == reference.encode(text) == tok.encode("a\ufffdb 😀")


def test_gpt2_files_load_and_save_unchanged(ours, tmp_path):
    tok = ours["python"]
    assert tok.vocab_size == 50257 and len(tok.merges) == 50000
    assert tok.special_tokens == {"<|endoftext|>": 50256}
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "encoder.json").read_text())
    assert saved == json.loads((Path(DATA) / "gpt2_encoder.json").read_text())
    original = (Path(DATA) / "gpt2_vocab.bpe").read_text().splitlines()
    assert (tmp_path / "vocab.bpe").read_text().splitlines() == [line for line in original if line]


def test_every_gpt2_token_comes_out_of_its_own_merges(ours):
    """encode_piece returns a piece that is a whole token at once (as tiktoken does); merging
    its bytes one pair at a time gives that same token for all 50,256 of GPT-2's."""
    tok = ours["python"]
    bytes_only = {t: i for t, i in tok.tokens.items() if len(t) == 1}
    merges = [(tok.tokens[a], tok.tokens[b], tok.tokens[a + b]) for a, b in tok.merges]
    # (encode_piece splits no text, so the C++ core can do with blank character classes)
    plain = (_bpe_core.Encoder(bytes_only, merges, bytes(0x110000)) if _bpe_core is not None
             else Encoder(bytes_only, merges))
    assert [t for t, i in tok.tokens.items() if plain.encode_piece(t) != [i]] == []
