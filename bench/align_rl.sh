#!/usr/bin/env bash
# Stage 5, part 2, measured on a CPU: reward over-optimisation (best-of-n, PPO and GRPO against
# the proxy reward model, scored by the gold reward), DPO at more betas for the matched-KL table,
# and GRPO on the verifiable addition task (3 seeds). Each step appends its command, wall and
# CPU seconds to $RES/times.tsv.
#
#   bash bench/align_rl.sh [STEP ...]    steps: bon ppo grpo weak dpo dpo_early eval addition report
#                                        (default: all, in that order)
# Needs the runs of bench/align_stage5.sh in $ALIGN (default /tmp/align: the SFT model, the
# proxy reward model rm2-3200, the gold-labelled pairs). RL runs go to $WORK (default /tmp/rl);
# results are written to bench/results/stage5_rl/.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINI_LLM_DATA_DIR=${MINI_LLM_DATA_DIR:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
A=${ALIGN:-/tmp/align}
W=${WORK:-/tmp/rl}
RES=bench/results/stage5_rl
SFT=$A/sft-char
RM=$A/rm2-3200
PROMPTS=(--prompts "$A/data/sft_train.jsonl" --eval-prompts "$A/data/sft_val.jsonl")
ADD_SEEDS="1 2 3"
mkdir -p "$W" "$RES"

source bench/timed.sh  # timed NAME CMD...

step_bon() {  # 2048 answers per prompt: best of 1 .. 2048, KL 0 .. 6.6 nats
    timed bon mini-llm align best-of-n --model "$SFT" --reward "$RM" --prompts "$A/data/sft_val.jsonl" \
        --samples 2048 --n 1 2 4 8 16 32 64 128 256 512 1024 2048 --seed 7 --out "$RES/best_of_n.json"
}
step_ppo() {  # a weak KL penalty, so the policy travels far enough for the gold reward to turn;
              # 16 answers per prompt at each evaluation (384): the gold curve's noise is the question
    timed ppo mini-llm align ppo --base "$SFT" --reward "$RM" "${PROMPTS[@]}" --kl-coef 0.01 \
        --max-new-tokens 96 --max-iters 360 --eval-interval 30 --eval-samples 16 --lr 5e-5 --min-lr 5e-5 \
        --out "$W/ppo-proxy"
}
step_grpo() {
    timed grpo mini-llm align grpo --base "$SFT" --reward "$RM" "${PROMPTS[@]}" \
        --max-new-tokens 96 --max-iters 300 --eval-interval 20 --lr 5e-5 --min-lr 5e-5 --out "$W/grpo-proxy"
}
step_weak() {  # the same best-of-n and GRPO against a weaker proxy: the reward model of 400 pairs (55%)
    timed bon_rm400 mini-llm align best-of-n --model "$SFT" --reward "$A/rm2-400" --prompts "$A/data/sft_val.jsonl" \
        --samples 256 --n 1 2 4 8 16 32 64 128 256 --seed 7 --out "$RES/best_of_n_rm400.json"
    timed grpo_rm400 mini-llm align grpo --base "$SFT" --reward "$A/rm2-400" "${PROMPTS[@]}" \
        --max-new-tokens 96 --max-iters 200 --eval-interval 20 --lr 5e-5 --min-lr 5e-5 --out "$W/grpo-rm400"
}
step_dpo() {  # larger betas than part 1's: under Adam they do not bring DPO's KL down
    for beta in 5.0 20.0; do
        timed "dpo_b$beta" mini-llm align dpo --base "$SFT" --data "$A/pairs_3200.jsonl" --val-data "$A/pairs_val.jsonl" \
            --beta "$beta" --seed 1 --max-iters 100 --out "$W/dpo-b$beta"
    done
}
step_dpo_early() {  # part 1's DPO (beta 0.2, 800 pairs) stopped early: DPO points at low KL
    for iters in 5 10 20 40; do
        timed "dpo_early_$iters" mini-llm align dpo --base "$SFT" --data "$A/pairs_train.jsonl" \
            --val-data "$A/pairs_val.jsonl" --beta 0.2 --seed 1 --max-iters "$iters" --warmup-iters 2 \
            --eval-interval "$iters" --out "$W/dpo-b0.2-it$iters"
    done
}
step_eval() {  # every final model measured as part 1 measured DPO: same prompts, seed, sampling
    timed eval mini-llm align eval --models "$W/ppo-proxy" "$W/grpo-proxy" "$W/dpo-b5.0" "$W/dpo-b20.0" \
        "$W"/dpo-b0.2-it{5,10,20,40} \
        --reference "$SFT" --prompts "$A/data/sft_val.jsonl" --seed 7 --out "$RES/eval.jsonl"
}
step_addition() {  # GRPO on the verifiable task, 3 seeds; pass@1 of SFT and of each GRPO model
    local data=$W/data
    [ -d "$W/add-sft" ] || {  # the task and the SFT model (arithmetic.py's recipe)
        mini-llm align data addition --out "$data"
        timed add_base mini-llm train --data "$data/corpus.txt" --out "$W/add-base" --n-layer 2 --n-head 4 \
            --n-embd 64 --block-size 32 --batch-size 32 --max-iters 3000 --eval-interval 500 --eval-iters 10 \
            --log-interval 250 --sample-tokens 0 --lr 3e-3 --min-lr 3e-4 --warmup-iters 100
        timed add_sft mini-llm align sft --base "$W/add-base" --data "$data/sft_train.jsonl" \
            --val-data "$data/sft_val.jsonl" --out "$W/add-sft" --max-iters 1200 --batch-size 32 \
            --eval-interval 300 --log-interval 300
    }
    rm -f "$RES/addition_passk.jsonl"
    timed add_passk_sft mini-llm align passk --model "$W/add-sft" --prompts "$data/test_prompts.jsonl" \
        --out "$W/add-sft.passk.jsonl"
    for seed in $ADD_SEEDS; do
        timed "add_grpo_s$seed" mini-llm align grpo --base "$W/add-sft" --reward addition \
            --prompts "$data/rl_prompts.jsonl" --eval-prompts "$data/test_prompts.jsonl" \
            --max-new-tokens 8 --k 8 --prompts-per-rollout 32 --max-iters 300 --eval-interval 50 \
            --lr 1e-4 --min-lr 1e-4 --seed "$seed" --out "$W/add-grpo-s$seed"
        timed "add_passk_s$seed" mini-llm align passk --model "$W/add-grpo-s$seed" \
            --prompts "$data/test_prompts.jsonl" --out "$W/add-grpo-s$seed.passk.jsonl"
    done
}
step_report() {
    python bench/align_rl_report.py --work "$W" --align "$A" --out "$RES"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(bon ppo grpo weak dpo dpo_early eval addition report)
for s in "${steps[@]}"; do "step_$s"; done
