"""What the commands share: one --flag per dataclass field, the quantization flags."""

import argparse
import dataclasses
import types

from ..errors import MiniLLMError
from ..model import CHOICES

HELP = {
    "out": "run folder (default: out/<preset>)",
    "data": "a UTF-8 text file to train on (default: Tiny Shakespeare, found or downloaded)",
    "kernels": "backends for the ops, e.g. torch, reference, triton, auto or "
               "attention=cuda,layer_norm=triton (default: $MINI_LLM_KERNELS, else torch)",
    "device": "auto, cpu or cuda", "dtype": "auto, float32 or bfloat16 (autocast)",
    "compile": "torch.compile the model", "grad_accum": "micro-batches per optimizer step",
    "sample_tokens": "tokens to sample at the end (0: none)",
    "tokenizer": "a BPE tokenizer folder (from `mini-llm tokenizer train`) or gpt2 (GPT-2's own); "
                 "default: characters",
    "nvtx": "emit NVTX ranges for Nsight (see docs/stage-4-profiling-memory.md)",
    "mlp_hidden": "the MLP's inner width (default: 4 x n_embd for gelu; for swiglu 8/3 x n_embd "
                  "rounded up to a multiple of 64)",
    "activation_checkpointing": "blocks keep only their input and recompute the rest in the "
                                "backward: less memory, one more forward",
    "parallel": "ddp, ddp-torch, zero1, zero2, fsdp or fsdp-torch: train on the ranks torchrun "
                "started (with --nproc-per-node N this command starts them); see "
                "docs/stage-4-parallel.md",
}


def add_dataclass_flags(parser, cls, skip=()):
    """One --flag per dataclass field; default None, so what the user gave can be told apart.
    A field's help is its metadata["help"], else HELP[name]."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type.__args__[0] if isinstance(f.type, types.UnionType) else f.type
        extra = {"choices": CHOICES[f.name]} if f.name in CHOICES else {}
        text = f.metadata.get("help", HELP.get(f.name))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text, **extra)


def given(args, cls, skip=()):
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name) is not None}


QUANT_BITS = {"int8": 8, "int4": 4}


def check_quant_flags(quant, group_size):
    if group_size is not None and quant != "int4":
        raise MiniLLMError("--group-size is for --quant int4; int8 keeps one scale per output channel")


def add_quant_flags(p, required):
    p.add_argument("--quant", choices=tuple(QUANT_BITS), required=required,
                   help="weight-only quantization of the blocks' linear layers (mini_llm/quant.py); "
                        "with the torch kernels each step dequantizes the weights, so it saves memory "
                        "but is slower: the triton and cuda kernels dequantize in registers")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128), default=None,
                   help="int4: weights per scale (default 64); int8 has one scale per output channel")
