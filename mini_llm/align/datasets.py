"""JSONL files for the align commands, made from the shipped corpora: `mini-llm align data`.

shakespeare  the project's controlled task: given a speaker's name, answer with one speech in
             that speaker's voice. Tiny Shakespeare is a sequence of turns "NAME:\\nspeech\\n\\n";
             each short turn of a frequent speaker becomes {"prompt": NAME, "response": speech}.
             Every 10th such turn is held out for validation. (The last 10% of the text, which
             the base model did not pretrain on, holds other plays and other speakers; these
             held-out speeches were in its pretraining text, which a model of a million
             parameters barely memorizes: its train and val losses differ by ~0.05 nats.)
gsm8k        {"prompt": question, "response": worked answer ending "#### N"}.
orca         the Orca DPO pairs: {"prompt": system + user message, "chosen", "rejected"}.
addition     a verifiable task for RL (arithmetic.py), generated from a seed: corpus.txt ("a+b=c"
             lines) to pretrain a character model on, SFT pairs, RL training prompts and held-out
             test prompts, every problem in exactly one of these files.
The sources are found or downloaded as data.fetch does, and checked against their sha256.
"""

import json
import re
from collections import Counter
from pathlib import Path

from ..data import TINY_SHAKESPEARE
from ..files import RemoteFile, atomic_write_bytes, fetch
from .arithmetic import problems, prompt_of

GSM8K = {split: RemoteFile(f"gsm8k_{split}.jsonl",
                           f"https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl",
                           sha)
         for split, sha in (("train", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
                            ("test", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"))}
ORCA_PAIRS = RemoteFile(
    "orca_dpo_pairs_validation.jsonl",
    "https://raw.githubusercontent.com/microsoft-foundry/fine-tuning/main/Sample_Datasets/"
    "Direct_Preference_Optimization/orca_dpo_pairs/validation.jsonl",
    "21ebe627cbd53a4e5bf214bcb625591b1e4aa8bf07750dde1e4d81050951772f")
SPEAKER = re.compile(r"([A-Z][A-Za-z' ]*[A-Za-z]):\n(.+)", re.DOTALL)


def write_jsonl(path, rows):
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def shakespeare_turns(text):
    """[(speaker, speech)] in the order of the text."""
    return [(m.group(1), m.group(2).strip()) for block in text.split("\n\n")
            if (m := SPEAKER.fullmatch(block.strip()))]


def shakespeare(out, max_chars=100, speakers=24, path=None):
    """sft_train.jsonl and sft_val.jsonl: speeches of at most max_chars characters by the
    `speakers` most frequent speakers."""
    turns = shakespeare_turns(fetch(TINY_SHAKESPEARE, path).read_text(encoding="utf-8"))
    frequent = {name for name, _ in Counter(s for s, _ in turns).most_common(speakers)}
    rows = [{"prompt": s, "response": r} for s, r in turns if s in frequent and len(r) <= max_chars]
    write_jsonl(Path(out) / "sft_train.jsonl", [r for i, r in enumerate(rows) if i % 10])
    write_jsonl(Path(out) / "sft_val.jsonl", rows[::10])
    return frequent


def gsm8k(out):
    for split, remote in GSM8K.items():
        rows = [json.loads(line) for line in fetch(remote).read_text(encoding="utf-8").splitlines() if line]
        write_jsonl(Path(out) / f"gsm8k_{split}.jsonl",
                    [{"prompt": r["question"], "response": r["answer"]} for r in rows])


def orca(out):
    rows = [json.loads(line) for line in fetch(ORCA_PAIRS).read_text(encoding="utf-8").splitlines() if line]
    write_jsonl(Path(out) / "orca_pairs.jsonl", [
        {"prompt": "\n".join(m["content"] for m in r["input"]["messages"]),
         "chosen": r["preferred_output"][-1]["content"], "rejected": r["non_preferred_output"][-1]["content"]}
        for r in rows])


# Problems per file of `addition`. The test set comes first, so it stays the same problems
# whatever the other sizes are.
ADDITION_SIZES = {"test_prompts": 200, "rl_prompts": 2000, "sft_val": 500, "sft_train": 20000, "corpus": 100000}


def addition(out, seed=0, digits=3, sizes=ADDITION_SIZES):
    """The addition task's files from one seeded stream of distinct problems, sliced in order."""
    pairs = iter(problems(sum(sizes.values()), seed, digits))
    split = {name: [next(pairs) for _ in range(n)] for name, n in sizes.items()}
    out = Path(out)
    # prompts keep their "answer" for reading; SFT pairs call it "response", as SFT reads them
    for names, field in ((("test_prompts", "rl_prompts"), "answer"), (("sft_train", "sft_val"), "response")):
        for name in names:
            write_jsonl(out / f"{name}.jsonl", [{"prompt": prompt_of(a, b), field: str(a + b)} for a, b in split[name]])
    atomic_write_bytes(out / "corpus.txt", "".join(f"{prompt_of(a, b)}={a + b}\n" for a, b in split["corpus"]).encode())


BUILDERS = {"shakespeare": shakespeare, "gsm8k": gsm8k, "orca": orca, "addition": addition}
