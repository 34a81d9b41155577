"""Stage 5, alignment: supervised fine-tuning, a reward model, DPO, and RL (PPO, GRPO,
best-of-n), each a Task of the one training loop (mini_llm/loop.py), measured against a gold
reward or an exact checker. `mini-llm align ...`.

Read in this order:
  chat.py      the chat markers on any tokenizer, the template, a base model given their rows
  batches.py   JSONL examples, right padding (why no attention mask is needed), response labels
  losses.py    SFT, Bradley-Terry, DPO / IPO, sequence log-probs, the KL estimator
  gold.py      the gold reward and its blind spots
  datasets.py  the task's files from Tiny Shakespeare; GSM8K and the Orca pairs
  runs.py      what the commands share: models with the markers, run folders, defaults
  sft.py, reward.py, dpo.py   the three trainings
  evaluate.py  sampling answers, gold reward and KL per model, the frontier plot
  pairs.py     sampled answers paired and labelled by the gold reward
Part 2, RL (docs/stage-5-rl.md):
  rollout.py   k answers per prompt with the KV cache, and their per-token log-probs
  rl_losses.py GAE, the clipped policy and value losses, KL estimators, group advantages
  rewards.py   gold, the addition checker or a reward model; failing answers skipped
  rl.py        what PPO and GRPO share: settings, scored rollouts, minibatches, evaluation
  ppo.py, grpo.py, best_of_n.py   the three methods
  arithmetic.py  the verifiable task: addition, its checker, pass@1
"""
