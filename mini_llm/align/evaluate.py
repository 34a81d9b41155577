"""Sampling answers and scoring them: `mini-llm align eval` (and the sampling pairs.py uses).

eval:  for each model, answers sampled at temperature 1 (the model's own distribution, which
       the KL estimate needs), their mean gold reward, the sequence-level KL to a reference
       model, each with its standard error, and the share of answers in the task's format.
       Base, SFT and DPO models then sit on one reward-vs-KL plot (plot_frontier).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write_bytes
from ..errors import ConfigError, DataError
from ..generate import generate
from ..loop import seeded
from .batches import Encoded, collate, read_jsonl
from ..tokenizer.chat import chat_template
from .gold import gold_reward
from .losses import kl_estimate, sequence_logps
from .runs import check_same_shape, load_chat_model

SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z' ]*:$", re.MULTILINE)  # "ROMEO:": a new speaker's turn


@dataclass
class Answer:
    ids: list  # the response's tokens, with the end-of-turn token if the model stopped
    text: str  # decoded, without the end-of-turn token
    stopped: bool  # the model ended its turn within the context
    clean: bool  # no chat marker inside (a model can sample one; it is not part of a speech)

    @property
    def usable(self):
        """A finished, non-empty, clean answer: one that can serve as a training response."""
        return self.stopped and self.clean and bool(self.text.strip())


def distinct_prompts(path):
    return list(dict.fromkeys(row["prompt"] for _, row in read_jsonl(path, ("prompt",))))


@torch.no_grad()
def sample_answers(model, tokenizer, prompt, n, generator, temperature=1.0):
    """n answers to one prompt in one batch (one prompt: no padding), at temperature 1 unless
    told (0: greedy), each ending at its end-of-turn token or at the end of the context."""
    prompt_ids = tokenizer.encode(chat_template(prompt))
    room = model.config.block_size - len(prompt_ids)
    if room < 1:
        raise DataError(f"the prompt {prompt[:40]!r} fills the context of {model.config.block_size}")
    device = model.wte.weight.device
    idx = torch.tensor([prompt_ids] * n, device=device)
    out = generate(model, idx, room, temperature=temperature, generator=generator, stop_token=tokenizer.end_id)
    answers = []
    for row in out[:, len(prompt_ids):].tolist():
        stopped = tokenizer.end_id in row
        ids = row[: row.index(tokenizer.end_id) + 1] if stopped else row
        body = ids[:-1] if stopped else ids
        clean = all(i < tokenizer.base.vocab_size for i in body)
        answers.append(Answer(ids, tokenizer.decode(body), stopped, clean))
    return prompt_ids, answers


@torch.no_grad()
def answer_logps(model, prompt_ids, answers):
    """log p(answer | prompt) under `model`, (n,)."""
    b = collate([Encoded(prompt_ids, a.ids) for a in answers]).to(model.wte.weight.device)
    return sequence_logps(model(b.ids)[0], b.labels).cpu()


def in_format(answer):
    """The task's format: one speech that the model ended itself, with no blank line and no
    other speaker's turn in it."""
    return answer.usable and "\n\n" not in answer.text and not SPEAKER_LINE.search(answer.text)


def mean_and_stderr(values):
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def evaluate_model(model, reference, tokenizer, prompts, samples_per_prompt, seed):
    """Gold reward, KL(model || reference) and format rate of answers sampled from `model`."""
    rewards, logp, logp_ref, formats, lengths, examples = [], [], [], [], [], []
    for k, prompt in enumerate(prompts):
        prompt_ids, answers = sample_answers(model, tokenizer, prompt, samples_per_prompt, seeded(seed, "eval", k))
        rewards += [gold_reward(a.text) for a in answers]
        logp.append(answer_logps(model, prompt_ids, answers))
        logp_ref.append(answer_logps(reference, prompt_ids, answers))
        formats += [in_format(a) for a in answers]
        lengths += [len(a.ids) for a in answers]
        examples.append({"prompt": prompt, "answer": answers[0].text})
    kl, kl_stderr = kl_estimate(torch.cat(logp), torch.cat(logp_ref))
    reward, reward_stderr = mean_and_stderr(rewards)
    return {"gold_reward": reward, "gold_reward_stderr": reward_stderr, "kl": kl, "kl_stderr": kl_stderr,
            "format_rate": sum(formats) / len(formats), "mean_tokens": sum(lengths) / len(lengths),
            "samples": len(rewards), "seed": seed, "examples": examples[:3]}


def check_new(path):
    """Refuse an output file that exists (checked before the work, and again at the write)."""
    if Path(path).exists():
        raise ConfigError(f"{path} exists: choose another output file")


def write_new(path, rows):
    """Write JSON lines to a file that must not exist yet (nothing is overwritten)."""
    check_new(path)
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def evaluate_runs(model_paths, reference_path, prompts_path, out, plot=None, max_prompts=24,
                  samples_per_prompt=8, seed=1337):
    """`mini-llm align eval`: one record per model into the JSONL `out`, and the frontier plot."""
    check_new(out)
    reference, ref_tokenizer, _ = load_chat_model(reference_path)
    prompts = distinct_prompts(prompts_path)[:max_prompts]
    records = []
    for path in model_paths:
        model, tokenizer, ckpt = load_chat_model(path)
        check_same_shape(reference, ref_tokenizer, model, tokenizer, path)
        align = ckpt.meta.get("align", {})
        record = {"model": str(path), "stage": align.get("stage", "base"), "beta": align.get("beta"),
                  "train_seed": ckpt.meta["train_config"]["seed"],
                  **evaluate_model(model, reference, tokenizer, prompts, samples_per_prompt, seed)}
        records.append(record)
        print(f"{path}: gold reward {record['gold_reward']:+.3f} +- {record['gold_reward_stderr']:.3f}, "
              f"KL {record['kl']:.2f} +- {record['kl_stderr']:.2f} nats, format {record['format_rate']:.0%}")
    write_new(out, records)
    if plot:
        plot_frontier(records, plot)
    return records


def plot_frontier(records, out_png):
    """Gold reward against KL to the reference, one point per model (error bars: standard
    errors), DPO points coloured by beta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    colors = {}  # one colour and one legend entry per stage and beta (seeds share them)
    for r in records:
        stage, beta = r.get("stage", "model"), r.get("beta")
        label = f"{stage} (beta {beta})" if beta is not None else stage
        first = label not in colors
        colors.setdefault(label, f"C{len(colors)}")
        ax.errorbar(r["kl"], r["gold_reward"], xerr=r["kl_stderr"], yerr=r["gold_reward_stderr"], fmt="o",
                    capsize=3, color=colors[label], label=label if first else None)
    ax.legend(fontsize=8)
    ax.set(xlabel="KL(model || reference), nats per answer", ylabel="gold reward (VADER compound, mean)",
           title="gold reward against KL to the SFT reference")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
