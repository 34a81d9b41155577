"""mini-llm scratch (stage F) and tokenizer (stage 1)."""

import sys
import time

from ..data import TINY_SHAKESPEARE
from ..errors import MiniLLMError
from ..files import check_output_folder, fetch
from ..scratch.train import ScratchTrainConfig, train_char_mlp
from ..tokenizer import train_bpe_file
from ..tokenizer.gpt2_format import ENCODER_FILE, MERGES_FILE
from .common import add_dataclass_flags, given


def cmd_scratch_train(args):
    train_char_mlp(ScratchTrainConfig(**given(args, ScratchTrainConfig)))


def cmd_tokenizer_train(args):
    out = check_output_folder(args.out)
    if not args.force and any((out / name).exists() for name in (ENCODER_FILE, MERGES_FILE)):
        raise MiniLLMError(f"{out} holds a tokenizer; pass --force to replace it, or another --out")
    path = fetch(TINY_SHAKESPEARE, args.data)
    t0 = time.perf_counter()
    tok = train_bpe_file(path, args.vocab_size, args.special_tokens, backend=args.backend, progress=True)
    seconds = time.perf_counter() - t0
    if tok.vocab_size < args.vocab_size:
        print(f"warning: the text allows only {tok.vocab_size} tokens, not the {args.vocab_size} "
              "asked for: every piece of it became a single token first", file=sys.stderr)
    tok.save(args.out)
    print(f"{tok.vocab_size} tokens (256 bytes, {len(tok.merges)} merges, {len(tok.special_tokens)} "
          f"special) learned from {path} in {seconds:.2f} s ({tok.backend.name} backend); "
          f"wrote {args.out}/encoder.json and vocab.bpe")


def add_stage_commands(sub):
    """scratch (stage F) and tokenizer (stage 1)."""
    p = sub.add_parser("scratch", help="stage F: neural networks from scratch in NumPy")
    scratch = p.add_subparsers(dest="scratch_command", required=True)
    p = scratch.add_parser("train", help="train the character MLP language model on the NumPy "
                           "autograd engine (Tiny Shakespeare)")
    add_dataclass_flags(p, ScratchTrainConfig)
    p.set_defaults(func=cmd_scratch_train)

    p = sub.add_parser("tokenizer", help="byte-level BPE tokenizers (GPT-2 format)")
    tokenizer_sub = p.add_subparsers(dest="tokenizer_command", required=True)
    p = tokenizer_sub.add_parser("train", help="learn a tokenizer from a UTF-8 text")
    p.add_argument("--data", help="the text (default: Tiny Shakespeare, found or downloaded)")
    p.add_argument("--vocab-size", type=int, default=1024, help="256 bytes + merges + special tokens")
    p.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"],
                   help="never split or merged (default: <|endoftext|>; none: give the flag alone)")
    p.add_argument("--backend", default="auto", choices=("auto", "python", "cpp"),
                   help="the hot loops in C++ (auto: where built) or in pure Python")
    p.add_argument("--out", default="out/tokenizer", help="folder for encoder.json and vocab.bpe")
    p.add_argument("--force", action="store_true", help="replace a tokenizer already in --out")
    p.set_defaults(func=cmd_tokenizer_train)
