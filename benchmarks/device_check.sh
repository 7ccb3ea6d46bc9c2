#!/usr/bin/env bash
# One prepared run on a GPU machine: build the CUDA extension, run the GPU tests, run every
# benchmark with sizes that finish in minutes, and collect JSON/markdown (+ logs) in $OUT
# (default benchmarks/results/). Each stage has its own time limit so the script always finishes.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
LOG="$OUT/device_check.log"
start=$(date +%s)
stage() { echo "== [$(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }

stage "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"; } >>"$LOG" 2>&1

stage "build (pip install --no-build-isolation --no-deps -e .)"
timeout 200 "$PY" -m pip install --no-build-isolation --no-deps -e . >>"$LOG" 2>&1 || { stage "BUILD FAILED"; tail -40 "$LOG"; exit 1; }
"$PY" -c "import esper_fast, esper_fast._C_cuda as m; print('backends on cuda:', esper_fast.available_backends('cuda'), 'devices seen by _C_cuda:', m.device_count())" 2>&1 | tee -a "$LOG"

stage "GPU tests"
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 12"
# The CPU variants of these tests run in CI; here only what needs the GPU.
timeout 130 "$PY" -m pytest -q $XDIST -p no:cacheprovider tests/test_select.py tests/test_actions.py \
    tests/test_policy.py tests/test_compile.py tests/test_env.py \
    -k "cuda or gpu or graph or sync or inductor or devices or generator_on_wrong" >/tmp/gpu_tests.log 2>&1
echo "pytest exit code: $?" | tee -a /tmp/gpu_tests.log
cat /tmp/gpu_tests.log >>"$LOG"
tail -5 /tmp/gpu_tests.log

# QUICK=1: tests + get_action only (a short re-check after a kernel change).
if [ "${QUICK:-0}" != "1" ]; then
stage "bench select"
timeout 110 "$PY" -m esper_fast.bench select --budget-s 80 --out "$OUT" >>"$LOG" 2>&1 || stage "bench select exited with $?"

fi

stage "bench get_action"
timeout 140 "$PY" -m esper_fast.bench get_action --budget-s 95 --profile-batch 64 --out "$OUT" >>"$LOG" 2>&1 || stage "bench get_action exited with $?"

if [ "${QUICK:-0}" != "1" ]; then
stage "bench train"
# fused vs unfused trainer at 16 / 1024 / 4096 envs (issue 9); sizes past --budget-s are skipped and noted
timeout 240 "$PY" -m esper_fast.bench train --device cuda --num-envs 16,1024,4096 --repeats 2 --budget-s 170 \
  --out "$OUT" >>"$LOG" 2>&1 || stage "bench train exited with $?"
fi

stage "done"
cat "$OUT"/*.md 2>/dev/null | cut -c1-400
ls -la "$OUT" | tee -a "$LOG"
