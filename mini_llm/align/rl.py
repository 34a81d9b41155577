"""What PPO and GRPO share: their settings, the prompts, a scored rollout, rollouts cut into
the minibatches of the shared training loop, and the evaluation.

RL plugs into loop.fit like every stage: one iteration is one optimizer step on a minibatch.
Iteration `it` reads minibatch (it mod epochs x minibatches) of rollout it // (epochs x
minibatches): a rollout is sampled when the loop enters it, then trained on `epochs` times in
`minibatches` steps each (PPO's ppo_epochs, GRPO's mu). The first step on a rollout is on-policy:
its importance ratio pi / pi_old is 1.
"""

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..loop import SingleProcess, Task, fit, seeded
from ..plot import read_metrics
from ..tokenizer.chat import chat_template
from .evaluate import distinct_prompts
from .losses import kl_estimate
from .rewards import Sample, make_reward, score
from .rollout import rollout, token_logprobs
from .runs import check_same_shape, device_of, finish_align, load_chat_model, new_align_run


def setting(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class RLConfig:
    prompts: str = setting(None, "JSONL with \"prompt\": what the policy answers (distinct prompts)")
    reward: str = setting("gold", "gold, addition (the verifiable task's checker) or a reward-model run")
    eval_prompts: str = setting(None, "JSONL of held-out prompts (default: the last 10%% of --prompts)")
    k: int = setting(8, "answers sampled per prompt")
    prompts_per_rollout: int = setting(8, "prompts per rollout (N = prompts x k answers)")
    max_new_tokens: int = setting(64, "the longest answer, in tokens")
    temperature: float = setting(1.0, "the sampling temperature (log-probs are of that distribution)")
    epochs: int = setting(1, "optimisation passes over each rollout")
    minibatches: int = setting(1, "optimizer steps per pass: the rollout's answers split in this many")
    clip: float = setting(0.2, "the clip range eps of the ratio pi / pi_old")
    kl_coef: float = setting(0.05, "the KL penalty's weight (PPO: per token in the reward; GRPO: beta)")
    eval_samples: int = setting(4, "answers per held-out prompt at each evaluation")

    def __post_init__(self):
        if not self.prompts:
            raise ConfigError("--prompts is required: a JSONL file of prompts")
        for name in ("k", "prompts_per_rollout", "max_new_tokens", "epochs", "minibatches", "eval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_rollout * self.k < self.minibatches:
            raise ConfigError(f"a rollout of {self.prompts_per_rollout} x {self.k} answers cannot be split "
                              f"into {self.minibatches} minibatches")
        if not self.temperature > 0 or not self.clip > 0 or not self.kl_coef >= 0:
            raise ConfigError("--temperature and --clip must be > 0, --kl-coef >= 0")


@dataclass
class Prompts:
    texts: list  # as written in the file
    ids: list  # in the chat template, encoded


def read_prompts(path, tokenizer, limit=None):
    texts = distinct_prompts(path)[:limit]
    return Prompts(texts, [tokenizer.encode(chat_template(t)) for t in texts])


def split_prompts(rl, tokenizer):
    """(train, held-out) prompts: --eval-prompts, or the last 10% of --prompts."""
    train = read_prompts(rl.prompts, tokenizer)
    if rl.eval_prompts:
        return train, read_prompts(rl.eval_prompts, tokenizer)
    n = max(1, len(train.texts) // 10)
    if len(train.texts) <= n:
        raise ConfigError(f"{rl.prompts} holds {len(train.texts)} distinct prompts: too few to hold out "
                          f"{n} for evaluation (give --eval-prompts)")
    return (Prompts(train.texts[:-n], train.ids[:-n]), Prompts(train.texts[-n:], train.ids[-n:]))


def pick_prompts(prompts, count, generator):
    rows = torch.randint(len(prompts.ids), (count,), generator=generator).tolist()
    return Prompts([prompts.texts[i] for i in rows], [prompts.ids[i] for i in rows])


def scored_rollout(policy, tokenizer, prompts, k, reward, generator, max_new_tokens, temperature=1.0):
    """(rollout, its Samples, their rewards (N,)): NaN where the reward failed (rewards.score)."""
    r = rollout(policy, prompts.ids, k, max_new_tokens, tokenizer.end_id, generator, temperature)
    samples = [Sample(prompts.texts[row // k], tokenizer.decode(a[:-1] if stopped else a), r.ids[row, :n].tolist())
               for row, (a, stopped, n) in enumerate(zip(r.answers, r.stopped, r.lengths.tolist()))]
    return r, samples, score(reward, samples)


@torch.no_grad()
def reference_logprobs(reference, ids, temperature):
    return token_logprobs(reference(ids)[0], ids, temperature)


class Minibatches:
    """The Task's batch(it, micro) for RL: `make(r)` -> (per-answer tensors {name: (N, ...)},
    rollout statistics {name: float}) builds rollout r when the loop first needs it."""

    def __init__(self, make, rl, seed, device):
        self.make, self.rl, self.seed, self.device = make, rl, seed, device
        self.index, self.data, self.stats = None, None, None

    def __call__(self, it, micro):
        steps = self.rl.epochs * self.rl.minibatches
        r, step = divmod(it, steps)
        if r != self.index:
            self.data, self.stats = self.make(r)
            self.index = r
        epoch, part = divmod(step, self.rl.minibatches)
        n = next(iter(self.data.values())).size(0)
        order = torch.randperm(n, generator=seeded(self.seed, "minibatch", r, epoch))
        rows = order.chunk(self.rl.minibatches)[part].to(self.device)
        return {name: value[rows] for name, value in self.data.items()}, self.stats


def rollout_stats(rewards, r, k):
    """What every RL step logs about its rollout; reward_std is the mean over prompts of the std
    of their answers' rewards (TRL's), over the prompts with two scored answers or more (with one
    answer per prompt, the std over the rollout)."""
    valid = ~rewards.isnan()
    groups = [g[~g.isnan()] for g in (rewards.view(-1, k) if k > 1 else rewards.view(1, -1))]
    stds = [g.std().item() for g in groups if g.numel() > 1]
    return {"reward": rewards[valid].mean().item(), "reward_std": sum(stds) / len(stds) if stds else 0.0,
            "answer_tokens": r.mask.sum(1).float().mean().item(),
            "stopped": sum(r.stopped) / len(r.stopped), "skipped": (~valid).sum().item()}


def as_metrics(stats):
    return {name: torch.tensor(float(value)) for name, value in stats.items()}


def load_policy_and_reference(base, reference, device):
    """The policy with its dropout off (TRL's disable_dropout: the ratio pi / pi_old must compare
    the same function, and a rollout samples without dropout) and the frozen reference."""
    policy, tokenizer, _ = load_chat_model(base, device)
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    ref, ref_tokenizer, _ = load_chat_model(reference or base, device)
    check_same_shape(policy, tokenizer, ref, ref_tokenizer, f"the reference {reference or base}")
    return policy, ref.requires_grad_(False).eval(), tokenizer


class PolicyOnly(SingleProcess):
    """Checkpoints hold the policy alone, so `mini-llm sample` and `align eval` read them as any
    language model (the value model and the optimizer state are not kept: RL runs do not resume)."""

    def for_checkpoint(self, model, optimizer):
        return getattr(model, "policy", model), None


def rl_evaluation(reference, tokenizer, prompts, rl, reward, seed, policy_of=lambda m: m):
    """Task.evaluate for RL: on the held-out prompts, the mean reward of eval_samples answers
    each, the gold reward too when a reward model is optimised (how far proxy and gold part is
    the over-optimisation study), and KL(policy || reference) per answer. The same seed at every
    evaluation: the curves differ by the policy, not by the draw."""
    gold = make_reward("gold") if rl.reward not in ("gold", "addition") else None

    def evaluate(model):
        policy = policy_of(model)
        r, samples, rewards = scored_rollout(policy, tokenizer, prompts, rl.eval_samples, reward, seeded(seed, "rl-eval"),
                                             rl.max_new_tokens, rl.temperature)
        ids = r.ids.to(policy.wte.weight.device)
        ref_logp = reference_logprobs(reference, ids, rl.temperature).cpu()
        kl, kl_stderr = kl_estimate((r.logprobs * r.mask).sum(1), (ref_logp * r.mask).sum(1))
        out = {"reward": rewards.nanmean().item(), "kl": kl, "kl_stderr": kl_stderr}
        if gold is not None:
            out["gold_reward"] = score(gold, samples).nanmean().item()
        return out
    return evaluate


def train_rl(cfg, rl, base, reference, stage, method):
    """The run every RL method shares: the policy of run `base`, the frozen reference, the
    prompts split, the reward, the shared loop, a checkpoint of the policy. method(policy,
    reference, tokenizer, train prompts, reward) -> (the module trained, make(r) for
    Minibatches, the loss, module -> its policy)."""
    if cfg.grad_accum != 1:
        raise ConfigError("RL takes one micro-batch per step: use --minibatches, not --grad-accum")
    device = device_of(cfg)
    policy, ref, tokenizer = load_policy_and_reference(base, reference, device)
    train, held_out = split_prompts(rl, tokenizer)
    reward = make_reward(rl.reward, device)
    model, make, loss, policy_of = method(policy, ref, tokenizer, train, reward)
    run = new_align_run(cfg, model.to(device), tokenizer, {"stage": stage, "base": str(base), "reward": rl.reward,
                                                           "reference": str(reference or base), "rl": vars(rl)})
    run.ranks = PolicyOnly()
    answers = rl.prompts_per_rollout * rl.k
    tokens = answers // rl.minibatches * (sum(map(len, train.ids)) // len(train.ids) + rl.max_new_tokens)
    task = Task(Minibatches(make, rl, cfg.seed, device), loss,
                rl_evaluation(ref, tokenizer, held_out, rl, reward, cfg.seed, policy_of), tokens)
    print(f"{stage}: {len(train.texts)} training and {len(held_out.texts)} held-out prompts, reward {rl.reward}, "
          f"{rl.prompts_per_rollout} prompts x {rl.k} answers per rollout, {rl.epochs} x {rl.minibatches} "
          f"steps on each, kl_coef {rl.kl_coef}")
    summary = finish_align(run, fit(run, task), {"rl": vars(rl)})
    plot_rewards(run.out, run.out / "rewards.png")
    return summary


def plot_rewards(run_dir, out_png):
    """The held-out reward (and gold reward) against the step, and the KL beside it: what an RL
    run's loss curve does not show (its loss hovers near 0 whether it learns or not)."""
    import matplotlib  # here: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in read_metrics(run_dir) if r["kind"] == "eval"]
    steps = [r["iter"] for r in evals]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("reward", "gold_reward"):
        if key in evals[0]:
            left.plot(steps, [r[key] for r in evals], "o-", label=key.replace("_", " "))
    right.errorbar(steps, [r["kl"] for r in evals], yerr=[r["kl_stderr"] for r in evals], fmt="o-", capsize=3)
    left.set(xlabel="step", ylabel="mean over held-out answers", title="reward")
    right.set(xlabel="step", ylabel="nats per answer", title="KL(policy || reference)")
    left.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
