"""GSM8K through the SFT path: what a small model does with grade-school math.

For the first N test problems, a greedy answer from the base model (in the chat format it was
never taught) and from the SFT model; reported: the share of answers that end their turn, that
reach the "#### N" final-answer line GSM8K teaches, and whose final number is right.

    python bench/align_gsm8k.py --model SFT_RUN --base BASE_RUN --data gsm8k_test.jsonl --n 50 --out FILE
"""

import argparse
import json
import re

import torch

from mini_llm.align.batches import read_jsonl
from mini_llm.tokenizer.chat import chat_template
from mini_llm.align.runs import load_chat_model
from mini_llm.generate import generate

FINAL = re.compile(r"####\s*(-?[\d,.]+)")


@torch.no_grad()
def greedy_answer(model, tokenizer, question):
    """The greedy answer (the end of a long question kept, as --truncate does)."""
    prompt = tokenizer.encode(chat_template(question))[-(model.config.block_size * 3 // 4):]
    room = model.config.block_size - len(prompt)
    out = generate(model, torch.tensor([prompt]), room, temperature=0, stop_token=tokenizer.end_id)[0, len(prompt):]
    ids = out.tolist()
    stopped = tokenizer.end_id in ids
    return tokenizer.decode(ids[: ids.index(tokenizer.end_id)] if stopped else ids), stopped


def score(model, tokenizer, problems):
    ended = has_final = correct = 0
    examples = []
    for row in problems:
        text, stopped = greedy_answer(model, tokenizer, row["prompt"])
        truth = FINAL.search(row["response"]).group(1).replace(",", "")
        m = FINAL.search(text)
        ended += stopped
        has_final += m is not None
        correct += m is not None and m.group(1).replace(",", "") == truth
        if len(examples) < 2:
            examples.append({"question": row["prompt"][:120], "answer": text[:300], "truth": truth})
    n = len(problems)
    return {"ended_turn": ended / n, "final_answer_line": has_final / n, "correct": correct / n,
            "examples": examples}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True, help="gsm8k_test.jsonl as `mini-llm align data gsm8k` writes it")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    problems = [row for _, row in read_jsonl(args.data, ("prompt", "response"))][: args.n]
    result = {"problems": len(problems), "decoding": "greedy"}
    for name, path in (("base", args.base), ("sft", args.model)):
        model, tokenizer, ckpt = load_chat_model(path)
        result[name] = {"run": path, "params": model.num_params(), **score(model, tokenizer, problems)}
        print(name, {k: v for k, v in result[name].items() if k != "examples"})
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
