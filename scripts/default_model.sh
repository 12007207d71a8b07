#!/usr/bin/env bash
# `make default-model`: the embedded default model's recipe on this machine, each stage limited in
# minutes and resumable. A stage resumes from runs/<stage> when it is there; the teacher otherwise
# starts from the committed weights in training/world-teacher/ and writes its newest EMA weights
# (float16), log and curves back there, so every run, on any machine, continues the last one.
# Distillation starts only when the teacher passes the gate (bench/world_probe.py; docs/design.md §10).
#   TEACHER_MIN=60 ODE_MIN=30 DMD_MIN=30 THREADS=2 bash scripts/default_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TEACHER_MIN=${TEACHER_MIN:-60} ODE_MIN=${ODE_MIN:-30} DMD_MIN=${DMD_MIN:-30}
export OMP_NUM_THREADS=${THREADS:-2}
state=training/world-teacher
train() { "$PY" -m reward_forcing.train --config "configs/$1.yaml" --stage "$2" --set max_minutes="$3"; }

train world-teacher teacher "$TEACHER_MIN"
"$PY" scripts/export_world_student.py runs/world-teacher --out "$state/ema.safetensors" \
  --note "EMA weights of the world teacher (stage teacher), float16"
cp runs/world-teacher/log.jsonl "$state/log.jsonl"
cp runs/world-teacher/curves.png "$state/curves.png" 2>/dev/null || true
chunk=$("$PY" -c "from reward_forcing.train import TrainConfig; print(TrainConfig.load('configs/world-teacher.yaml').teacher_chunk_frames)")
"$PY" bench/world_probe.py "$state/ema.safetensors" --out "$state/gate" --chunk-frames "$chunk"
if ! "$PY" -c "import json, sys; sys.exit(not json.load(open('$state/gate.json'))['gate']['passes_gate'])"; then
  echo "the teacher is below the gate ($state/gate.json): not distilling; commit $state and run again"
  exit 0
fi
train world-ode-init ode-init "$ODE_MIN"
for v in dmd redmd tilted; do train "world-$v" dmd "$DMD_MIN"; done
echo "students in runs/world-{dmd,redmd,tilted}: score them with bench/world_table.py, export the best"
echo "passing one with scripts/export_world_student.py (python/reward_forcing/weights/)"
