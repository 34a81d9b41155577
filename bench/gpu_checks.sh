#!/usr/bin/env bash
# Everything the kernels still owe a GPU, in the order to run it, results under $OUT (default
# out/gpu_checks). Each step can run alone: bash bench/gpu_checks.sh STEP [STEP ...]
#   build     install without touching the machine's torch (setup.py builds the CUDA extension),
#             then the standalone programs (cmake)
#   tests     pytest -m gpu: the full shape/dtype grid of every Triton and CUDA kernel
#   sanitize  compute-sanitizer memcheck + racecheck on each standalone CUDA program
#   bench     the op suite (full shapes, bf16), quant_matmul vs a bf16 matmul, decode tokens/s;
#             copies results to bench/results/
#   train     shakespeare-char, 5000 iterations, with reference, triton and cuda kernels
# A step stops the script when it fails. The device tool allows 10 minutes a command: run one
# or two steps per call (tests and train may each need several calls: pass pytest -k / fewer
# kernel sets by hand there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_checks}
mkdir -p "$OUT"
export MINI_LLM_BUILD_DIR=${MINI_LLM_BUILD_DIR:-$PWD/build/jit}

build() {
  pip install --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; return 1; }
  cmake -B build -S . >"$OUT/cmake.log" && cmake --build build -j >>"$OUT/cmake.log" 2>&1
}

tests() {
  python -m pytest -q -m gpu -x --junitxml="$OUT/pytest_gpu.xml" 2>&1 | tail -40 | tee "$OUT/pytest_gpu.txt"
}

sanitize() {  # small odd shapes: every validation case runs, the timing shape stays cheap
  local failed=0
  for run in "layer_norm 64 1000" "attention 1 2 300 64" "decode_attention 2 8 2 1 700 64" "quant_matmul 17 300 384"; do
    set -- $run
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 1 "build/$@" >"$OUT/$1_$tool.txt" 2>&1
      status=$?
      echo "$run $tool: exit $status" | tee -a "$OUT/sanitizer_summary.txt"
      [ "$status" -eq 0 ] || failed=1
    done
  done
  return $failed
}

bench() {
  mini-llm bench --shapes full --dtype bfloat16 --ops layer_norm,rms_norm,add_layer_norm,add_rms_norm,attention,decode_attention,quant_matmul \
    --out "$OUT/bench" && cp "$OUT/bench/results.json" bench/results/ops_full_gpu.json \
    && cp "$OUT/bench/results.md" bench/results/ops_full_gpu.md && cp "$OUT/bench/roofline.png" bench/results/ops_full_gpu_roofline.png
  python -m mini_llm.bench.quant_vs_bf16 --out bench/results
  python -m mini_llm.bench.decode_speed --out "$OUT" && cp "$OUT"/decode_gpu.* bench/results/
}

train() {
  python -m mini_llm.bench.train_kernel_sets --preset shakespeare-char --kernels reference,triton,cuda \
    --out "$OUT/runs" --results "$OUT"
}

for step in "${@:-build tests sanitize bench train}"; do
  for s in $step; do "$s" || { echo "gpu_checks: step $s failed (logs in $OUT)"; exit 1; }; done
done
