#!/usr/bin/env bash
# The GPU path, measured in one short run (under 8 minutes on one H200), from the repository root:
#
#   bash bench/gpu.sh                # on a GPU machine (the device tool: `bash bench/gpu.sh`, timeout_s 540)
#   bash bench/gpu.sh --cpu-check    # the same steps on the CPU at the tiny size, tiny durations (< 3 min)
#                                    # (or DSO_GPU_BENCH_CPU=1)
#
# Steps, each under its own `timeout` and all under one deadline (a step that fails or hangs is recorded and the
# next one runs; the exit status is 1 when any step failed):
#   1. generator  bench/generator.py: TRELLIS-L stage 1 (flow transformer + decoder) with random weights
#                 (model.source: random), batch 1 and 8, fp32 and bf16: samples/s, peak GPU memory.
#   2. learner    bench/learner.py --size trellis-l: one learner step, DRO vs DPO at LoRA r=64 (B = 6, bf16
#                 autocast), both batch conventions: step time, peak GPU memory.
#   3. loop       `dso run` for 180 s on one GPU: generator, learner and canary on cuda, simulators on the CPUs.
#                 The loop runs the TINY model on cuda, not TRELLIS-L: TRELLIS-L needs DINOv2 weights to turn a
#                 prompt image into its condition, and none can be fetched on the device machine; with random
#                 flow and decoder weights every sample is noise, the oracle's verdicts carry no signal (often a
#                 single class, so the learner never starts) and the canary's gate compares noise with noise.
#                 TRELLIS-L's cost per sample and per step is what steps 1 and 2 measure; step 3 measures the
#                 loop machinery (actors, broker, canary) with the GPU doing the model work.
# Results: $OUT if set (the device tool brings back what is written there), else runs/gpu/:
#   gpu_bench.log, gpu_bench.json (steps, status, seconds), generator.json, learner.json, loop_summary.json.
# Python: $DSO_GPU_PYTHON, else .venv/bin/python, else `make setup` builds .venv (needs the package registries).
# requirements.lock pins torch 2.13.0 as a CPU build: when that torch sees no GPU the script says so and, only if
# the machine has a GPU (nvidia-smi) and reaches download.pytorch.org, installs the cu128 build of the same version;
# otherwise it stops with "no CUDA torch".
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=${DSO_GPU_BENCH_CPU:-0}
[[ "${1:-}" == "--cpu-check" ]] && CPU=1
RESULTS=${OUT:-runs/gpu}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
LOG=$RESULTS/gpu_bench.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE=$!
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/dso-gpu-bench.XXXXXX")
DEADLINE=$((SECONDS + (CPU == 1 ? 170 : 465)))  # the whole script, setup included, stays inside this
export PYTHONUNBUFFERED=1

declare -A STATUS SECS
ORDER=()
step() {  # step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left); record ok / failed / timed out / skipped
  local name=$1 limit=$2 rc=0 t0=$SECONDS left
  shift 2
  ORDER+=("$name")
  left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    STATUS[$name]="skipped (out of time)"; SECS[$name]=0
    echo "=== $name: skipped, ${left}s left"
    return 0
  fi
  echo "=== $name (timeout ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  SECS[$name]=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]=ok ;;
    124 | 137) STATUS[$name]="timed out (${limit}s)" ;;
    *) STATUS[$name]="failed (rc $rc)" ;;
  esac
  echo "=== $name: ${STATUS[$name]} in ${SECS[$name]}s"
}

finish() {  # write gpu_bench.json, print the summary table, exit 1 when any step is not ok
  local failed=0 name sep=""
  {
    printf '{\n  "mode": "%s",\n  "note": "%s",\n  "steps": {' "$([[ $CPU == 1 ]] && echo cpu-check || echo gpu)" "${NOTE:-}"
    for name in "${ORDER[@]}"; do
      printf '%s\n    "%s": {"status": "%s", "seconds": %s}' "$sep" "$name" "${STATUS[$name]}" "${SECS[$name]}"
      sep=","
      [[ ${STATUS[$name]} == ok ]] || failed=1
    done
    printf '\n  },\n  "failed": %s\n}\n' "$([[ $failed == 1 ]] && echo true || echo false)"
  } > "$RESULTS/gpu_bench.json"
  echo
  echo "================ summary ($([[ $CPU == 1 ]] && echo "CPU check, tiny size" || echo GPU)) ================"
  [[ -n ${NOTE:-} ]] && echo "note: $NOTE"
  for name in "${ORDER[@]}"; do printf '%-12s %-24s %5ss\n' "$name" "${STATUS[$name]}" "${SECS[$name]}"; done
  if [[ -x ${PY:-} ]] || command -v "${PY:-none}" > /dev/null; then
    "$PY" - "$RESULTS" <<'EOF' || true
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
gen = load("generator.json")
if gen:
    print("\ngenerator (%s weights, %s timed batch(es) after a warm-up)" % (gen["source"] or "trained", gen["reps"]))
    print("| config | device | dtype | batch | samples/s | s/batch | peak GPU MiB |")
    for r in gen["results"]:
        print(f"| {r['config']} | {r['device']} | {r['dtype']} | {r['batch']} | {r['samples_per_s']:.2f} "
              f"| {r['seconds_per_batch']:.3f} | {r.get('peak_gpu_mb', float('nan')):.0f} |")
    for f in gen["failed"]:
        print(f"| {f['config']} | {f['device']} | {f['dtype']} | {f['batch']} | FAILED | | |")
lrn = load("learner.json")
if lrn:
    print(f"\nlearner ({lrn['size']}, B = {lrn['batch']}, LoRA r = {lrn['lora_r']}, median of {lrn['steps']} steps)")
    print("| convention | objective | samples | ms/step | peak MiB | saved activations MiB |")
    for r in lrn["results"]:
        print(f"| {r['convention']} | {r['objective']} | {r['samples']} | {r['median_s'] * 1e3:.1f} "
              f"| {r['peak_bytes'] / 2**20:.0f} | {r['saved_bytes'] / 2**20:.0f} |")
loop = load("loop_summary.json")
if loop:
    t = loop.get("totals", {})
    secs = loop.get("seconds") or float("nan")
    print(f"\nloop: {secs:.0f} s, generated {t.get('generated')}, labelled {t.get('labelled')} "
          f"({(t.get('generated') or 0) / secs:.2f} samples/s), stable rate {t.get('stability_rate')}, "
          f"learner step {loop.get('learner', {}).get('step')}, versions published {len(loop.get('versions_published', []))}, "
          f"problems {loop.get('problems')}")
EOF
  fi
  echo "results: $RESULTS"
  rm -rf "$SCRATCH"
  exec > /dev/null 2>&1
  wait "$TEE" || true  # the log is complete before the script ends
  exit "$failed"
}

# --- Python and torch --------------------------------------------------------------------------------------------
PY=${DSO_GPU_PYTHON:-.venv/bin/python}
if [[ ! -x $PY ]] && ! command -v "$PY" > /dev/null; then
  step setup 420 make setup
  [[ ${STATUS[setup]} == ok ]] || { NOTE="no Python environment: make setup failed (no registry access?)"; finish; }
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())'
if [[ $CPU != 1 ]]; then
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "!!! the installed torch cannot see a GPU (requirements.lock pins the CPU build)"
    if command -v nvidia-smi > /dev/null \
      && "$PY" -c 'import urllib.request as u; u.urlopen("https://download.pytorch.org/whl/cu128/", timeout=5)' 2> /dev/null; then
      step cuda-torch 300 bash -c "'$PY' -m pip uninstall -y torch && '$PY' -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    fi
    if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
      NOTE="no CUDA torch: the installed torch sees no GPU, and no cu128 build was installed (no GPU or no network)"
      STATUS[cuda]="failed (no CUDA torch)"; SECS[cuda]=0; ORDER+=(cuda)
      echo "!!! $NOTE"
      finish
    fi
  fi
fi

# --- the steps ---------------------------------------------------------------------------------------------------
if [[ $CPU == 1 ]]; then  # the same steps at the tiny size on the CPU, tiny durations
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  GEN=(--config tiny --source random --device cpu --reps 1)
  LEARN=(--size tiny --steps 1 --repeats 1 --threads 1)
  DEV=cpu GPUS=0 SIMS=1 LOOP_S=20 LOOP_LIMIT=110
else
  GEN=(--config trellis --source random --device cuda --reps 1)
  LEARN=(--size trellis-l --steps 3 --repeats 1)
  DEV=cuda GPUS=0.4 SIMS=8 LOOP_S=180 LOOP_LIMIT=270
fi

step generator 150 "$PY" bench/generator.py "${GEN[@]}" --batches 1 8 --dtypes fp32 bf16 --json "$RESULTS/generator.json"
step learner 150 "$PY" bench/learner.py "${LEARN[@]}" --objectives dro dpo --no-write --json "$RESULTS/learner.json"

# the loop: bounded to LOOP_S, shortened (never lengthened) so that it ends before the deadline
left=$((DEADLINE - SECONDS - 70))
((LOOP_S > left)) && LOOP_S=$((left > 10 ? left : 10))
echo "loop: ${LOOP_S}s, tiny model, generator / learner / canary on $DEV, $SIMS simulator(s)"
step loop "$LOOP_LIMIT" env \
  DSO__LOOP__RUN_DIR="$SCRATCH/loop" DSO__BROKER__RUN_DIR="$SCRATCH/loop" DSO__LOOP__DURATION_S="$LOOP_S" \
  DSO__LOOP__DRAIN_MAX_S=30 DSO__LOOP__STOP_TIMEOUT_S=30 DSO__LOOP__SIMULATORS="$SIMS" \
  DSO__LOOP__GENERATOR_DEVICE=$DEV DSO__LOOP__GENERATOR_NUM_GPUS=$GPUS \
  DSO__LOOP__LEARNER_DEVICE=$DEV DSO__LOOP__LEARNER_NUM_GPUS=$GPUS \
  DSO__CANARY__DEVICE=$DEV DSO__CANARY__NUM_GPUS="$([[ $CPU == 1 ]] && echo 0 || echo 0.2)" \
  "$PY" -m dso.cli run --config tiny --no-api
cp "$SCRATCH/loop/summary.json" "$RESULTS/loop_summary.json" 2> /dev/null || echo "loop: no summary.json"

finish
