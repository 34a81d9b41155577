#!/usr/bin/env bash
# The kernels' GPU run, for a GPU machine lent ~15 minutes at a time (10 per command, 8 result
# files back): stages in order of value, each time-boxed, logs and results written into $OUT
# after every stage so that a run cut short still returns what it did; the summary printed last.
# Prepare it on the CPU machine first (python -m mini_llm.bench.gpu_prepare); docs/gpu_run.md
# says how to send it and what each stage costs.
#
#   bash bench/gpu_run.sh          the first command, ~9 minutes on one H100:
#     versions  torch, Triton, CUDA, nvcc and the GPU, each against what is expected
#     build     the binding compiled against this torch, in the background, linked with the
#               kernels' objects prebuilt on the CPU machine (checked current); pip install -e
#     tests     pytest -m gpu: both backends, one autotune config per key, in parallel
#     sanitize  compute-sanitizer memcheck + racecheck on each standalone program, small odd
#               shapes; beside them, the probe's Triton compiles (CPU work)
#     probe     each op's headline shapes against PyTorch (bench/probe.py), the GPU to itself
#     train     shakespeare-char, a few hundred iterations per kernel set, losses compared
#   bash bench/gpu_run.sh --rerun [TEST_ID ...]   the second command, what the first leaves:
#     rerun     the failed tests (the ids given, else pytest's last failed) in one process,
#               CUDA_LAUNCH_BLOCKING=1, long tracebacks
#     train_full  the preset's 5000 iterations per kernel set, while time remains
#
# Environment: OUT (the results folder; default out/gpu_run/results-<mode>), GPU_RUN_BUDGET
# (seconds for all stages), GPU_RUN_BOX_<stage> (one stage's limit), GPU_RUN_WORKERS (pytest
# processes), GPU_RUN_KERNELS (the kernel sets to probe and train; default all that run),
# GPU_RUN_DRY=1: a dry run of the plumbing on a CPU, every GPU command replaced by a quick
# stand-in (tests/test_gpu_run.py; GPU_RUN_DRY_SLOW=<stage> makes one overrun its box).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/bench/gpu_run.sh
PYTHON=${PYTHON:-python3}

dry() { [ "${GPU_RUN_DRY:-0}" = 1 ]; }

# A GPU command, or in a dry run its stand-in: say what would run, take GPU_RUN_DRY_SLOW's
# stage 60 seconds (to overrun its box), succeed.
gpu() {
  if dry; then
    echo "dry run: $*"
    if [ "${GPU_RUN_DRY_SLOW:-}" = "${STAGE:-}" ]; then sleep 60; fi
    return 0
  fi
  "$@"
}

# -- stages: each runs as `bash gpu_run.sh --stage NAME` under `timeout`, its output in its log --

stage_versions() {
  gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # What the tests, the probe and this script were written against: a difference is reported,
  # not fatal (the run goes on; the summary says what differed).
  "$PYTHON" - "$STATE/versions.txt" <<'EOF'
import re, shutil, subprocess, sys
import torch, triton
nvcc = shutil.which("nvcc")
nvcc_text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout if nvcc else ""
nvcc_release = (re.findall(r"release (\d+\.\d+)", nvcc_text) or ["not found"])[0]
found = {"torch": torch.__version__, "triton": triton.__version__, "CUDA (torch)": str(torch.version.cuda),
         "nvcc": nvcc_release}
expected = {"torch": "2.11", "triton": "3.6", "CUDA (torch)": "13.0", "nvcc": "13.0"}
lines = [f"{k} {v}: " + ("as expected" if v.startswith(expected[k]) else f"DIFFERS (expected {expected[k]})")
         for k, v in found.items()]
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
lines.append(f"GPU: {gpu}" + (f", {torch.cuda.get_device_properties(0).multi_processor_count} SMs" if gpu != "none" else ""))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -1 || echo "compute-sanitizer: not found"
}

stage_build() {
  # The kernels' objects and the standalone programs, compiled on the CPU machine.
  rm -f "$MINI_LLM_CUDA_BUILD_STATUS"
  if ! tar -xzf "$CARRY/build.tar.gz" -C "$BUILD"; then
    echo "no prebuilt objects: run python -m mini_llm.bench.gpu_prepare, carry .gpu-carry" | tee "$MINI_LLM_CUDA_BUILD_STATUS"
    return 1
  fi
  # The binding (csrc/bindings.cpp, against this torch) in the background and in a session of
  # its own (setsid, where there is one), so that cutting this stage cannot kill it: the CUDA
  # tests wait for its status file (tests/conftest.py), and so do the probe and the training.
  $(command -v setsid) bash "$SELF" --stage binding &
  if [ -f "$CARRY/triton-cache.tar.gz" ]; then
    mkdir -p "$TRITON_CACHE_DIR" && tar -xzf "$CARRY/triton-cache.tar.gz" -C "$TRITON_CACHE_DIR" \
      && echo "Triton cache: $(find "$TRITON_CACHE_DIR" -name '*.cubin' | wc -l) kernels carried"
  fi
  # The package itself, editable. CUDA_HOME pointing nowhere makes setup.py skip its own build
  # of the extension (every .cu again, minutes): the JIT build above links the prebuilt objects.
  if ! dry; then CUDA_HOME=/nonexistent "$PYTHON" -m pip install --no-deps --no-build-isolation -e . || return 1; fi
  "$PYTHON" -m mini_llm.bench.gpu_prepare --check "$BUILD" || echo "(those compile here: minutes)"
}

stage_binding() {
  gpu "$PYTHON" -m mini_llm.ops.cuda >"$LOGS/binding.log" 2>&1
  echo $? >"$MINI_LLM_CUDA_BUILD_STATUS.tmp" && mv "$MINI_LLM_CUDA_BUILD_STATUS.tmp" "$MINI_LLM_CUDA_BUILD_STATUS"
}

stage_tests() {
  # The timeout is per test function: the CUDA tests' fixture may wait longer for the binding.
  local args=(-m gpu -n "$WORKERS" --timeout 120 --timeout-method thread -o timeout_func_only=true -rfE -q
              --durations 15 --junitxml "$WORK/pytest_gpu.xml")
  if dry; then args+=(tests/test_gpu.py); fi  # a CPU skips every GPU test: the plumbing only
  MINI_LLM_AUTOTUNE=first "$PYTHON" -m pytest "${args[@]}"
}

stage_sanitize() {
  # Triton compiles need the CPU, not the GPU: the probe's run beside compute-sanitizer.
  local each=$(( STAGE_BOX > 10 ? STAGE_BOX - 5 : STAGE_BOX )) run  # each run ends before the stage is cut
  gpu timeout "$each" "$PYTHON" -m mini_llm.bench.probe --warm >"$LOGS/probe_warm.log" 2>&1 &
  for run in "layer_norm 64 1000" "attention 1 2 300 64" "decode_attention 2 8 2 1 700 64" "quant_matmul 17 300 384"; do
    for tool in memcheck racecheck; do
      sanitize_one "$each" "$tool" $run &
    done
  done
  wait
  sort -o "$WORK/sanitizer.txt" "$WORK/sanitizer.txt"
  cat "$WORK/sanitizer.txt"
  ! grep -qv ": clean$" "$WORK/sanitizer.txt"
}

sanitize_one() {  # SECONDS TOOL PROGRAM ARGS...: one line into sanitizer.txt
  local seconds=$1 tool=$2 program=$3 status verdict
  shift 3
  gpu timeout "$seconds" compute-sanitizer --tool "$tool" --error-exitcode 99 "$BUILD/standalone/$program" "$@" \
    >"$LOGS/sanitize_${program}_$tool.log" 2>&1
  status=$?
  case $status in
    0) verdict=clean ;;
    99) verdict="ERRORS found (see logs/sanitize_${program}_$tool.log)" ;;
    124) verdict="timed out after ${seconds}s" ;;
    *) verdict="the program failed (exit $status; its own check, see the log)" ;;
  esac
  echo "$program $* $tool: $verdict" >>"$WORK/sanitizer.txt"
}

stage_probe() {
  gpu "$PYTHON" -m mini_llm.bench.probe --out "$WORK/bench" --backends "$(backends)"
}

stage_train() {
  # The preset's model and batch; short runs compare the kernel sets' losses at the same
  # iteration (the 5000-iteration comparison is the second command's).
  local iters=${TRAIN_ITERS:-300} preset=shakespeare-char evals=50
  if dry; then iters=4 preset=tiny evals=2; fi
  "$PYTHON" -m mini_llm.bench.train_kernel_sets --preset "$preset" --kernels "$(backends)" \
    --out "$WORK/runs" --results "$WORK/bench" -- --max-iters "$iters" --eval-interval "$iters" --eval-iters "$evals"
}

stage_rerun() {  # exit 5 is pytest's "no tests ran": nothing failed, nothing to rerun
  local selection=("$@")
  [ ${#selection[@]} -gt 0 ] || selection=(-m gpu --lf --last-failed-no-failures none)
  if dry; then selection+=(tests/test_gpu.py); fi
  CUDA_LAUNCH_BLOCKING=1 MINI_LLM_AUTOTUNE=first "$PYTHON" -m pytest "${selection[@]}" -p no:xdist \
    --timeout 300 --tb long -rfE -q --junitxml "$WORK/pytest_rerun.xml" || [ $? = 5 ]
}

stage_train_full() {
  local preset=shakespeare-char args=(--eval-interval 5000)  # one evaluation, at the end
  if dry; then preset=tiny args=(--max-iters 4); fi
  "$PYTHON" -m mini_llm.bench.train_kernel_sets --preset "$preset" --kernels "$(backends)" \
    --out "$WORK/runs_full" --results "$WORK/bench" -- "${args[@]}"
}

backends() {  # GPU_RUN_KERNELS, else those that can run: cuda only once its build succeeded
  if [ -n "${GPU_RUN_KERNELS:-}" ]; then echo "$GPU_RUN_KERNELS"
  elif dry; then echo torch
  elif [ "$(cat "$MINI_LLM_CUDA_BUILD_STATUS" 2>/dev/null)" = 0 ]; then echo torch,triton,cuda
  else echo torch,triton
  fi
}

# -- the runner --

# stage NAME BOX [ARGS...]: run stage_NAME time-boxed (cut at BOX seconds or when the budget
# runs out, whichever is first), record its status, refresh the results folder.
stage() {
  local name=$1 box=${2}; shift 2
  local var="GPU_RUN_BOX_$name" left=$(( DEADLINE - $(date +%s) ))
  box=${!var:-$box}
  (( box > left )) && box=$left
  if (( left < 5 )); then
    printf '%s\tskipped\t0\t0\tno time left\n' "$name" >>"$STATE/stages.tsv"
    return
  fi
  echo "== $name (at most ${box}s) $(date -u +%T)"
  local start=$(date +%s) status note=""
  STAGE=$name STAGE_BOX=$box timeout -s INT -k 10 "$box" bash "$SELF" --stage "$name" "$@" >"$LOGS/$name.log" 2>&1
  status=$?
  case $status in
    0) note=ok ;;
    124 | 137) note="TIMED OUT" ;;
    *) note="FAILED (exit $status)" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$note" "$(( $(date +%s) - start ))" "$box" "logs/$name.log" >>"$STATE/stages.tsv"
  tail -n 6 "$LOGS/$name.log" | sed 's/^/   /'
  "$PYTHON" "$ROOT/bench/gpu_results.py" "$STATE" "$OUT"
}

wait_for_binding() {  # up to $1 seconds: the probe and the training want the cuda backend
  local until=$(( $(date +%s) + $1 ))
  while [ ! -f "$MINI_LLM_CUDA_BUILD_STATUS" ] && (( $(date +%s) < until )); do sleep 2; done
}

if [ "${1:-}" = --stage ]; then
  name=$2; shift 2
  "stage_$name" "$@"
  exit
fi

MODE=first
if [ "${1:-}" = --rerun ]; then MODE=rerun; shift; fi
STATE=$ROOT/out/gpu_run/$MODE  # the run's own files; out/ is gitignored, so a warm machine keeps them
export CARRY=${GPU_RUN_CARRY:-$ROOT/.gpu-carry}
export OUT=$(mkdir -p "${OUT:-$ROOT/out/gpu_run/results-$MODE}" && cd "${OUT:-$ROOT/out/gpu_run/results-$MODE}" && pwd)
export BUILD=$ROOT/out/gpu_run/build MINI_LLM_BUILD_DIR=$ROOT/out/gpu_run/build
export MINI_LLM_CUDA_BUILD_STATUS=$BUILD/binding.status
export MINI_LLM_DATA_DIR=$CARRY/data
# A fixed path: Triton's cache index holds absolute paths, and a later run unpacks it here too.
export TRITON_CACHE_DIR=/tmp/mini_llm_triton_cache
if dry; then TRITON_CACHE_DIR=$ROOT/out/gpu_run/triton-cache; fi
export STATE LOGS=$STATE/logs WORK=$STATE/work WORKERS=${GPU_RUN_WORKERS:-12} PYTHON
export PYTHONUNBUFFERED=1
rm -rf "$STATE" && mkdir -p "$LOGS" "$WORK" "$BUILD"
exec > >(tee "$OUT/run.log") 2>&1
TEE=$!
echo "$(date -u '+%F %T UTC') on $(hostname), $(cat "$CARRY/commit.txt" 2>/dev/null || echo 'commit unknown')$(dry && echo ', DRY RUN')" \
  >"$STATE/header.txt"
cat "$STATE/header.txt"

if [ "$MODE" = first ]; then
  DEADLINE=$(( $(date +%s) + ${GPU_RUN_BUDGET:-540} ))
  stage versions 60
  stage build 120
  stage tests 210
  stage sanitize 90
  wait_for_binding 60
  stage probe 150
  stage train 120
else
  DEADLINE=$(( $(date +%s) + ${GPU_RUN_BUDGET:-180} ))
  # A fresh machine (the first command's went back) has neither the install nor the binding.
  "$PYTHON" -c "import mini_llm.kernels" 2>/dev/null && [ -f "$MINI_LLM_CUDA_BUILD_STATUS" ] || stage build 120
  wait_for_binding 90
  stage rerun 120 "$@"
  stage train_full 600
fi
"$PYTHON" "$ROOT/bench/gpu_results.py" "$STATE" "$OUT" --final
exec >&- 2>&-
wait "$TEE"  # run.log complete before the command returns
