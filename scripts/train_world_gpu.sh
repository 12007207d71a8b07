#!/usr/bin/env bash
# The embedded world model on a lent GPU in one device call (issue 8): teacher -> ODE init -> DMD,
# Re-DMD and tilted critic (configs/world-*.yaml with GPU batch sizes), each stage time-limited
# with max_minutes (it stops with a checkpoint; rerunning on the same warm machine resumes every
# run where it stopped: runs/ does not come back, a fresh machine starts from scratch). Written
# for the first GPU session; not yet run on a GPU.
# The teacher's clips are rendered on the GPU (world.render_batch), so batch 256 is not data-bound.
# $OUT gets each run's EMA weights as a float16 default-model file (~9.5 MB; 5 files) and one
# world-logs.tar.gz (logs, jsonl, curves; refreshed after every stage): 6 files, ~48 MB, within
# what the device tool returns (8 files, 16 MiB each). Full checkpoints (~76 MB, with optimizer
# state) stay under runs/ on the machine.
# Then, here: copy a student's file to python/reward_forcing/weights/world-student.safetensors,
# run bench/world_table.py (CPU) on the exports, commit the exports and logs (see training/README.md).
#
# The teacher starts from TEACHER_INIT when that file exists (default: the CPU-trained teacher
# committed at training/world-teacher/ema.safetensors, EMA weights; TEACHER_INIT= starts
# from scratch), so CPU sessions and GPU sessions add up.
# Before: bash scripts/device-carry.sh (fills .whl/: einops, cutlass, MiniLM float16).
# Run:    device tool, carry [".whl"], command: OUT=$OUT bash scripts/train_world_gpu.sh
# Budget (minutes, defaults): TEACHER_MIN=3.2 ODE_MIN=1 DMD_MIN=0.6 (x3), ~25 s startup per stage,
# ~1 min build: ~9 min; every stage is cut to what is left before DEADLINE_S (560 s).
set -uo pipefail
OUT=${OUT:-/tmp/rf-world-out}
LOGS=/tmp/rf-world-logs
mkdir -p "$OUT" "$LOGS" runs
export PYTHONUNBUFFERED=1
TEACHER_MIN=${TEACHER_MIN:-3.2} ODE_MIN=${ODE_MIN:-1} DMD_MIN=${DMD_MIN:-0.6}
DEADLINE_S=${DEADLINE_S:-560}  # the device tool stops a command at 600 s: stages shrink to fit
TEACHER_INIT=${TEACHER_INIT-training/world-teacher/ema.safetensors}  # empty: from scratch
# batch sizes and render workers (small values make a CPU smoke run of the whole chain)
B_TEACHER=${B_TEACHER:-256} B_ODE=${B_ODE:-32} B_DMD=${B_DMD:-16} WORKERS=${WORKERS:-0}
START=$(date +%s)
say() { echo "[train_world_gpu $(( $(date +%s) - START ))s] $*" | tee -a "$LOGS/progress.log"; }
pack() { tar czf "$OUT/world-logs.tar.gz" -C "$LOGS" .; }

python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import cv2, einops, safetensors, torch, tqdm, transformers, yaml" 2>&1 \
  || { say "missing packages on this machine (carry their wheels in .whl/)"; pack; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$LOGS/env.txt" 2>&1
say "building (CPU ops only: training uses the SDPA path)"
build() { CMAKE_ARGS="-DRF_CUDA=OFF" timeout 240 python3 -m pip install -q --no-build-isolation --no-deps \
            -C build-dir=build/train "$@" . > "$LOGS/build.log" 2>&1; }
build || build --break-system-packages || { say "build failed"; tail -30 "$LOGS/build.log"; pack; exit 1; }

# stage config minutes [--set KEY=VALUE ...]
train() {
  local stage=$1 config=$2 minutes=$3; shift 3
  # at most what is left before the deadline, less ~60 s for startup, export and packing
  minutes=$(python3 -c "print(round(max(0.1, min($minutes, ($DEADLINE_S - $(( $(date +%s) - START )) - 60) / 60)), 2))")
  say "$config ($stage, $minutes min)"
  timeout $(python3 -c "print(int($minutes * 60 + 45))") \
    python3 -m reward_forcing.train --config "configs/$config.yaml" --stage "$stage" --no-progress \
    --set text_encoder=.whl/minilm-fp16 --set max_minutes="$minutes" --set max_steps=1000000 \
    "$@" > "$LOGS/$config.log" 2>&1 || say "$config exited with $?"
  tail -2 "runs/$config/log.jsonl" 2>/dev/null
  cp "runs/$config/log.jsonl" "$LOGS/$config-log.jsonl" 2>/dev/null
  cp "runs/$config/curves.png" "$LOGS/$config-curves.png" 2>/dev/null
  python3 scripts/export_world_student.py "runs/$config" --out "$OUT/$config.safetensors" \
    --note "trained on $(head -2 "$LOGS/env.txt" | tail -1)" >> "$LOGS/progress.log" 2>&1
  pack
}
init=()
if [ -n "$TEACHER_INIT" ]; then
  [ -f "$TEACHER_INIT" ] || { say "TEACHER_INIT $TEACHER_INIT does not exist (TEACHER_INIT= starts from scratch)"; pack; exit 1; }
  init=(--set teacher="$TEACHER_INIT"); say "teacher starts from $TEACHER_INIT"
fi
train teacher world-teacher "$TEACHER_MIN" "${init[@]}" --set batch_size="$B_TEACHER" --set data_workers="$WORKERS" --set save_every=1000 \
  --set ema_decay=0.999 --set ema_start=500
train ode-init world-ode-init "$ODE_MIN" --set batch_size="$B_ODE" --set save_every=200
for v in dmd redmd tilted; do
  train dmd "world-$v" "$DMD_MIN" --set batch_size="$B_DMD" --set save_every=100
done
say "done"; pack; ls -la "$OUT"
