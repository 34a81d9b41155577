"""Stage 1: a byte-level BPE tokenizer, from scratch, GPT-2 compatible.

Read in this order:
  pretokenize.py  GPT-2's split pattern, special tokens
  encoder.py      applying merges to a piece (encode's hot loop), with a cache
  trainer.py      learning merges with incremental pair counts and a heap (training's hot loop)
  train.py        training on a text: parallel counting, then the merge loop
  tokenizer.py    the Tokenizer: encode, decode, encode_iterable, save / load
  gpt2_format.py  GPT-2's encoder.json and vocab.bpe
  backends.py     the pure-Python hot loops or the C++ core (csrc/tokenizer/bpe_core.cpp), same results
  char.py         the character tokenizer, the default when no BPE tokenizer is given
  chat.py         the chat markers on top of either tokenizer, and the chat template

    from mini_llm.tokenizer import Tokenizer, train_bpe
    tok = Tokenizer.load("gpt2")            # GPT-2's own vocabulary and merges
    tok.decode(tok.encode("Hello world"))   # 'Hello world'
"""

from .char import CharTokenizer
from .chat import ChatTokenizer
from .tokenizer import Tokenizer
from .train import train_bpe, train_bpe_file


def tokenizer_from_dict(d):
    """Rebuild a tokenizer from its to_dict(): characters, or BPE. Records written before BPE
    existed have no "kind" and are characters."""
    if d.get("kind", "char") == "char":
        return CharTokenizer(d["chars"])
    if d["kind"] == "chat":  # a tokenizer with the chat markers (stage 5)
        return ChatTokenizer.from_dict(d, tokenizer_from_dict)
    return Tokenizer.from_dict(d)


__all__ = ["CharTokenizer", "ChatTokenizer", "Tokenizer", "tokenizer_from_dict", "train_bpe", "train_bpe_file"]
