"""mini-llm align (stage 5)."""

from pathlib import Path

from .. import ops
from ..align.arithmetic import pass_at_1_run
from ..align.datasets import BUILDERS
from ..align.dpo import dpo
from ..align.best_of_n import best_of_n
from ..align.evaluate import evaluate_runs
from ..align.grpo import GRPOConfig, grpo
from ..align.ppo import PPOConfig, ppo
from ..align.pairs import write_pairs
from ..align.reward import train_reward_model
from ..align.runs import align_config
from ..align.sft import sft
from ..train import TrainConfig
from .common import add_dataclass_flags, given

# --- mini-llm align (stage 5) ----------------------------------------------------------------
ALIGN_SKIP = ("tokenizer", "compile", "nvtx", "sample_tokens", "activation_checkpointing", "split_batch",
              "parallel")  # the align commands run in one process


def cmd_align_data(args):
    Path(args.out).mkdir(parents=True, exist_ok=True)
    BUILDERS[args.dataset](args.out)
    print(f"wrote {args.dataset} JSONL files into {args.out}/")


def align_settings(stage, args, skip=ALIGN_SKIP):
    """The run's TrainConfig; its --kernels are selected here, before any forward (DPO's
    reference pass, RL's rollouts) runs."""
    cfg = align_config(stage, given(args, TrainConfig, skip=skip))
    kernels = ops.set_kernels(cfg.kernels)
    if cfg.kernels:
        print(f"kernels: {ops.describe(kernels)}")
    return cfg


def cmd_align_sft(args):
    sft(align_settings("sft", args), args.base, args.val_data, args.truncate, args.limit)


def cmd_align_reward(args):
    train_reward_model(align_settings("reward", args), args.base, args.val_data, args.truncate, args.limit,
                       args.center_rewards_coefficient)


def cmd_align_dpo(args):
    dpo(align_settings("dpo", args), args.base, args.beta, args.reference, args.loss_type,
        args.label_smoothing, args.val_data, args.truncate, args.limit)


RL_SKIP = (*ALIGN_SKIP, "data", "batch_size", "grad_accum", "eval_iters")
RL_METHODS = {"ppo": (PPOConfig, ppo), "grpo": (GRPOConfig, grpo)}


def cmd_align_rl(args):
    settings, train = RL_METHODS[args.align_command]
    rl = settings(**given(args, settings))
    train(align_settings(args.align_command, args, RL_SKIP), rl, args.base, args.reference)


def cmd_align_best_of_n(args):
    result = best_of_n(args.model, args.reward, args.prompts, args.n, args.samples, args.max_new_tokens, args.seed,
                       args.max_prompts, args.out)
    for row in result["best_of_n"]:
        gold = f", gold reward {row['gold_reward']:+.3f}" if "gold_reward" in row else ""
        print(f"best of {row['n']:>4}: KL {row['kl']:.2f} nats, reward {row['reward']:+.3f}{gold}")
    if args.out:
        print(f"wrote {args.out}")


def cmd_align_pairs(args):
    write_pairs(args.model, args.prompts, args.pairs, args.out, args.seed, args.samples_per_prompt, args.bt_scale)


def cmd_align_eval(args):
    evaluate_runs(args.models, args.reference, args.prompts, args.out, args.plot, args.max_prompts,
                  args.samples_per_prompt, args.seed)
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def cmd_align_passk(args):
    pass_at_1_run(args.model, args.prompts, args.out, args.max_prompts, args.samples_per_prompt, args.seeds)
    print(f"wrote {args.out}")


def add_align_parsers(sub):
    align = sub.add_parser("align", help="stage 5: SFT, reward model, DPO, RL (PPO, GRPO, best-of-n), measured "
                           "against a gold reward or an exact checker")
    cmds = align.add_subparsers(dest="align_command", required=True)

    p = cmds.add_parser("data", help="write the align JSONL files from the shipped corpora")
    p.add_argument("dataset", choices=tuple(BUILDERS))
    p.add_argument("--out", default="out/align-data")
    p.set_defaults(func=cmd_align_data)

    def trainer(name, help, func, data_help):
        p = cmds.add_parser(name, help=help)
        p.add_argument("--base", required=True, help="the run (or checkpoint) to start from")
        p.add_argument("--val-data", help="held-out lines (default: the last 10%% of --data)")
        p.add_argument("--limit", type=int, help="use the first N lines of --data only")
        p.add_argument("--truncate", action="store_true", help="cut examples longer than the context "
                       "(the prompt's start, the response's end) instead of refusing them")
        p.add_argument("--data", required=True, help=data_help)
        add_dataclass_flags(p, TrainConfig, skip=(*ALIGN_SKIP, "data"))
        p.set_defaults(func=func)
        return p

    trainer("sft", "supervised fine-tuning on {prompt, response} lines", cmd_align_sft,
            "JSONL of {\"prompt\", \"response\"}")
    p = trainer("reward", "a reward model (Bradley-Terry) on {prompt, chosen, rejected} lines",
                cmd_align_reward, "JSONL of {\"prompt\", \"chosen\", \"rejected\"}")
    p.add_argument("--center-rewards-coefficient", type=float, help="TRL's reward centering (e.g. 0.01)")
    p = trainer("dpo", "direct preference optimization on {prompt, chosen, rejected} lines",
                cmd_align_dpo, "JSONL of {\"prompt\", \"chosen\", \"rejected\"}")
    p.add_argument("--beta", type=float, default=0.1, help="the KL penalty's strength (default 0.1)")
    p.add_argument("--reference", help="the frozen reference (default: --base)")
    p.add_argument("--loss-type", default="sigmoid", choices=("sigmoid", "ipo"))
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cDPO: labels flipped with this probability")

    add_rl_parsers(cmds)

    p = cmds.add_parser("pairs", help="sample answer pairs from a model, labelled by the gold reward")
    p.add_argument("--model", required=True, help="the run to sample from (the SFT model)")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\" (distinct prompts are used in turn)")
    p.add_argument("--pairs", type=int, default=500)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--samples-per-prompt", type=int, default=16)
    p.add_argument("--bt-scale", type=float, help="noisy labels: P(a preferred) = sigmoid(S (r_a - r_b))")
    p.add_argument("--out", required=True, help="the JSONL to write (must not exist)")
    p.set_defaults(func=cmd_align_pairs)

    p = cmds.add_parser("eval", help="gold reward and KL to a reference of each model's samples")
    p.add_argument("--models", nargs="+", required=True, help="runs to evaluate")
    p.add_argument("--reference", required=True, help="the run the KL is measured against (the SFT model)")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\"")
    p.add_argument("--max-prompts", type=int, default=24)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", required=True, help="JSONL, one record per model (must not exist)")
    p.add_argument("--plot", help="reward-vs-KL PNG")
    p.set_defaults(func=cmd_align_eval)

    p = cmds.add_parser("passk", help="pass@1 (per seed) and greedy accuracy on addition prompts")
    p.add_argument("--model", required=True, help="the run to evaluate")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\" (e.g. test_prompts.jsonl)")
    p.add_argument("--max-prompts", type=int, default=200)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", required=True, help="JSONL, one record per seed and one greedy (must not exist)")
    p.set_defaults(func=cmd_align_passk)


def add_rl_parsers(cmds):
    """mini-llm align ppo | grpo | best-of-n (part 2, RL)."""
    for name, (settings, _) in RL_METHODS.items():
        p = cmds.add_parser(name, help=f"{name.upper()}: optimise a reward with RL, with a KL penalty to the "
                            "reference (see docs/stage-5-rl.md)")
        p.add_argument("--base", required=True, help="the run to start from (the SFT model)")
        p.add_argument("--reference", help="the frozen reference (default: --base)")
        add_dataclass_flags(p, settings)
        add_dataclass_flags(p, TrainConfig, skip=RL_SKIP)
        p.set_defaults(func=cmd_align_rl)

    p = cmds.add_parser("best-of-n", help="sample n answers, keep the best by the reward: reward against "
                        "the analytic KL log n - (n-1)/n")
    p.add_argument("--model", required=True, help="the run to sample from (the SFT model)")
    p.add_argument("--reward", required=True, help="gold, addition or a reward-model run")
    p.add_argument("--prompts", required=True, help="JSONL with \"prompt\" (distinct prompts)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--samples", type=int, default=64, help="answers sampled per prompt (>= the largest n)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--max-prompts", type=int, help="use the first N distinct prompts")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", help="JSON to write (must not exist)")
    p.set_defaults(func=cmd_align_best_of_n)
