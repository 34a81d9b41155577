#!/usr/bin/env bash
# Everything the kernels still owe a GPU, in the order to run it, results under $OUT (default
# out/gpu_checks). Each step can run alone: bash bench/gpu_checks.sh STEP [STEP ...]
#   build     install without touching the machine's torch, build the CUDA extension, ptxas table
#   tests     pytest -m gpu: the full shape/dtype grid of every Triton and CUDA kernel
#   sanitize  compute-sanitizer memcheck + racecheck on each standalone CUDA program
#   bench     the op suite (full shapes, bf16) and decode tokens/s; copies results to bench/results/
#   train     shakespeare-char, 5000 iterations, with reference, triton and cuda kernels
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_checks}
mkdir -p "$OUT"
export MINI_LLM_BUILD_DIR=${MINI_LLM_BUILD_DIR:-$PWD/build/jit}

build() {
  pip install --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; return 1; }
  python -m mini_llm.ops.cuda | tee "$OUT/ptxas.txt"
  cmake -B build -S . >"$OUT/cmake.log" && cmake --build build -j >>"$OUT/cmake.log" 2>&1
}

tests() {
  python -m pytest -q -m gpu -x --junitxml="$OUT/pytest_gpu.xml" 2>&1 | tail -40 | tee "$OUT/pytest_gpu.txt"
}

sanitize() {
  for program in build/layer_norm build/attention build/decode_attention build/quant_matmul; do
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 1 "$program" >"$OUT/$(basename "$program")_$tool.txt" 2>&1
      echo "$(basename "$program") $tool: exit $?" | tee -a "$OUT/sanitizer_summary.txt"
    done
  done
}

bench() {
  mini-llm bench --shapes full --dtype bfloat16 --ops layer_norm,rms_norm,attention,decode_attention,quant_matmul \
    --out "$OUT/bench" && cp "$OUT/bench/results.json" bench/results/ops_full_gpu.json \
    && cp "$OUT/bench/results.md" bench/results/ops_full_gpu.md && cp "$OUT/bench/roofline.png" bench/results/ops_full_gpu_roofline.png
  python -m mini_llm.bench.decode_speed --out "$OUT" && cp "$OUT"/decode_gpu.* bench/results/
}

train() {
  python -m mini_llm.bench.train_kernel_sets --preset shakespeare-char --kernels reference,triton,cuda \
    --out "$OUT/runs" --results "$OUT"
}

for step in "${@:-build tests sanitize bench train}"; do
  for s in $step; do "$s"; done
done
