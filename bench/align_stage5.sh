#!/usr/bin/env bash
# Stage 5 measured end to end on a CPU: base -> SFT -> gold-labelled pairs -> reward-model curve,
# DPO beta sweep (3 betas x 2 seeds) -> reward-vs-KL frontier; the Orca pairs and GSM8K through
# the same commands. Each step appends its command, wall and CPU seconds to $RES/times.tsv.
#
#   bash bench/align_stage5.sh [STEP ...]    steps: base data sft pairs rm rm2 dpo eval bpe orca gsm8k report
#                                            (default: all, in that order)
# Runs go to $WORK (default /tmp/align); results are written to bench/results/stage5/.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINI_LLM_DATA_DIR=${MINI_LLM_DATA_DIR:-../shared/data} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
W=${WORK:-/tmp/align}
RES=bench/results/stage5
D=$W/data
mkdir -p "$W" "$RES"
BETAS="0.05 0.2 1.0"
SEEDS="1 2"
RM_PAIRS="50 100 200 400 800"
RM2_PAIRS="${RM2_PAIRS:-400 1600 3200}"

source bench/timed.sh  # timed NAME CMD...

step_base() {  # the character model every run starts from (context 128: a speech fits)
    timed base mini-llm train --preset shakespeare-char-cpu --block-size 128 --max-iters 1200 \
        --eval-interval 300 --sample-tokens 0 --out "$W/base-char"
}
step_data() {
    for d in shakespeare gsm8k orca; do mini-llm align data $d --out "$D"; done
}
step_sft() {
    timed sft mini-llm align sft --base "$W/base-char" --data "$D/sft_train.jsonl" \
        --val-data "$D/sft_val.jsonl" --seed 1 --out "$W/sft-char"
}
step_pairs() {  # training pairs from the training prompts, held-out pairs from another seed
    timed pairs mini-llm align pairs --model "$W/sft-char" --prompts "$D/sft_train.jsonl" --pairs 800 \
        --seed 1 --out "$W/pairs_train.jsonl"
    timed pairs_val mini-llm align pairs --model "$W/sft-char" --prompts "$D/sft_val.jsonl" --pairs 200 \
        --seed 2 --out "$W/pairs_val.jsonl"
    timed pairs_more mini-llm align pairs --model "$W/sft-char" --prompts "$D/sft_train.jsonl" --pairs 2400 \
        --seed 3 --out "$W/pairs_more.jsonl"
    cat "$W/pairs_train.jsonl" "$W/pairs_more.jsonl" > "$W/pairs_3200.jsonl"
}
step_rm() {  # reward-model accuracy on the held-out pairs against the number of training pairs
    for n in $RM_PAIRS; do
        timed "rm_$n" mini-llm align reward --base "$W/sft-char" --data "$W/pairs_train.jsonl" --limit "$n" \
            --val-data "$W/pairs_val.jsonl" --batch-size 8 --max-iters 100 --eval-interval 50 \
            --eval-iters 25 --out "$W/rm-$n"
    done
}
step_rm2() {  # the same curve to 3200 pairs, two epochs each at batch 16 and a lower learning rate
    for n in $RM2_PAIRS; do
        timed "rm2_$n" mini-llm align reward --base "$W/sft-char" --data "$W/pairs_3200.jsonl" --limit "$n" \
            --val-data "$W/pairs_val.jsonl" --batch-size 16 --max-iters $((n / 8)) --lr 3e-4 --min-lr 3e-5 \
            --warmup-iters 10 --eval-interval $((n / 8)) --eval-iters 13 --out "$W/rm2-$n"
    done
}
step_dpo() {
    for beta in $BETAS; do for seed in $SEEDS; do
        timed "dpo_b${beta}_s$seed" mini-llm align dpo --base "$W/sft-char" --data "$W/pairs_train.jsonl" \
            --val-data "$W/pairs_val.jsonl" --beta "$beta" --seed "$seed" --max-iters 100 \
            --out "$W/dpo-b$beta-s$seed"
    done; done
}
step_eval() {  # one command: base, SFT and every DPO model on one reward-vs-KL plot
    rm -f "$RES/eval.jsonl"
    timed eval mini-llm align eval --models "$W/base-char" "$W/sft-char" "$W"/dpo-b*-s* \
        --reference "$W/sft-char" --prompts "$D/sft_val.jsonl" --samples-per-prompt 8 --seed 7 \
        --out "$RES/eval.jsonl" --plot "$RES/frontier.png"
}
step_bpe() {  # a small BPE model for the real-data runs (Orca, GSM8K need more than 65 characters)
    mini-llm tokenizer train --vocab-size 512 --out "$W/bpe512" > "$W/bpe.log" 2>&1
    timed base_bpe mini-llm train --preset shakespeare-char-cpu --tokenizer "$W/bpe512" --block-size 256 \
        --n-layer 2 --max-iters 300 --eval-interval 100 --sample-tokens 0 --out "$W/base-bpe"
}
step_orca() {
    timed orca_rm mini-llm align reward --base "$W/base-bpe" --data "$D/orca_pairs.jsonl" --truncate \
        --batch-size 4 --max-iters 60 --eval-interval 30 --eval-iters 8 --out "$W/orca-rm"
    timed orca_dpo mini-llm align dpo --base "$W/base-bpe" --data "$D/orca_pairs.jsonl" --truncate \
        --beta 0.1 --batch-size 4 --max-iters 60 --eval-interval 30 --eval-iters 8 --out "$W/orca-dpo"
}
step_gsm8k() {
    timed gsm8k_sft mini-llm align sft --base "$W/base-bpe" --data "$D/gsm8k_train.jsonl" --truncate \
        --val-data "$D/gsm8k_test.jsonl" --max-iters 150 --eval-interval 50 --eval-iters 4 --out "$W/gsm8k-sft"
    timed gsm8k_eval python bench/align_gsm8k.py --model "$W/gsm8k-sft" --base "$W/base-bpe" \
        --data "$D/gsm8k_test.jsonl" --n 50 --out "$RES/gsm8k.json"
}
step_report() {
    python bench/align_report.py --work "$W" --results "$RES"
}

for s in "${@:-base data sft pairs rm rm2 dpo eval bpe orca gsm8k report}"; do
    for one in $s; do "step_$one"; done
done
