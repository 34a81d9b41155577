"""Stage 1: a byte-level BPE tokenizer, from scratch, GPT-2 compatible.

Read in this order:
  pretokenize.py  GPT-2's split pattern, special tokens
  encoder.py      applying merges to a piece (encode's hot loop), with a cache
  trainer.py      learning merges with incremental pair counts and a heap (training's hot loop)
  train.py        training on a text: parallel counting, then the merge loop
  tokenizer.py    the Tokenizer: encode, decode, encode_iterable, save / load
  gpt2_format.py  GPT-2's encoder.json and vocab.bpe
  backends.py     the pure-Python hot loops or the C++ core (csrc/tokenizer/bpe_core.cpp), same results

    from mini_llm.tokenizer import Tokenizer, train_bpe
    tok = Tokenizer.load("gpt2")            # GPT-2's own vocabulary and merges
    tok.decode(tok.encode("Hello world"))   # 'Hello world'
"""

from .tokenizer import Tokenizer
from .train import train_bpe, train_bpe_file

__all__ = ["Tokenizer", "train_bpe", "train_bpe_file"]
