#!/usr/bin/env bash
# One-shot GPU check (H100/H200, ~9 minutes): build the extension with its CUDA kernels (sm_90a),
# run the GPU tests (ops; the accelerated pipeline: CUDA graphs / torch.compile vs eager; the
# fused per-token ops; overlapped decode; flash-attn where it imports), then the end-to-end
# benchmark (bench/e2e.py: every DiT mode, then mode "none" and the best mode end to end with the Wan2.1
# VAE and the light decoder, overlapped and not; flash-attn on the best mode) and, when time is
# left and STEPS asks for it, the kernel benchmark. Everything useful lands in $OUT:
#   build.log, gpu_tests.log, e2e.log, <device>-e2e.json / .md, env.txt
#   (bench.log, <device>-kernels.json / .md with STEPS=...,kernels)
# Usage (repository root): OUT=/some/dir bash bench/gpu_check.sh
# STEPS (default "tests,e2e"; the build always runs) picks what follows the build. The e2e run gets
# the time left before a 520 s mark (at least 90 s; it writes its JSON after every row, so a cut
# keeps the rows done). Wheels: .whl/*.whl are installed first (einops, the CuTe headers);
# .whl/vae/*.whl (diffusers and what it needs) are appended to sys.path for the e2e run only, so
# the image's own packages win (scripts/device-carry.sh fills both; carry [".whl"]).
# Never aborts early on a test failure: the benchmark still runs (it checks its own rows).
STEPS=${STEPS:-tests,e2e}
step() { case ",$STEPS," in *",$1,"*) return 0 ;; esac; return 1; }
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/rf-gpu-out}
mkdir -p "$OUT"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check $(elapsed)s] $*"; }

# ---------------------------------------------------------------- environment
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ls .whl/vae/*.whl >/dev/null 2>&1; then  # unpacked only: appended to sys.path by the e2e step
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .whl/vae-site .whl/vae/*.whl
fi
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
{
  echo "date: $(date -u)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv 2>&1
  echo "nvcc: $(command -v nvcc) $(nvcc --version 2>&1 | tail -1)"
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
  python3 -c "import cutlass_library, os; print('cutlass include:', os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))" 2>&1 | tail -1
  python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  for m in numpy einops diffusers flash_attn flash_attn_interface; do
    python3 -c "import $m; print('$m', $m.__version__)" 2>&1 | tail -1
  done
} | tee "$OUT/env.txt"

# ---------------------------------------------------------------- build
say "building (log: $OUT/build.log)"
TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 CMAKE_BUILD_PARALLEL_LEVEL=16 \
  timeout 330 python3 -m pip install --no-build-isolation --no-deps -v -C build-dir=build/gpu . \
  > "$OUT/build.log" 2>&1
build_rc=$?
if [ $build_rc -ne 0 ] && grep -q "externally-managed-environment" "$OUT/build.log"; then
  say "pip refused the system environment; retrying with --break-system-packages"
  TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=16 CMAKE_BUILD_PARALLEL_LEVEL=16 \
    timeout 330 python3 -m pip install --break-system-packages --no-build-isolation --no-deps -v \
    -C build-dir=build/gpu . > "$OUT/build.log" 2>&1
  build_rc=$?
fi
tail -40 "$OUT/build.log"
if [ $build_rc -ne 0 ]; then
  say "BUILD FAILED (rc=$build_rc); compiler errors:"
  grep -nE "error|FAILED|Error" "$OUT/build.log" | head -80
  exit 1
fi
say "build ok"
set -o pipefail
cd /tmp && python3 -c "
import reward_forcing, torch
print('reward_forcing', reward_forcing.__file__, 'HAS_CPP', reward_forcing.HAS_CPP, 'HAS_CUDA_KERNELS', reward_forcing.HAS_CUDA_KERNELS)
" 2>&1 | tee -a "$OUT/env.txt"
cd - >/dev/null
so=$(python3 -c "import reward_forcing._C as c; print(c.__file__)" 2>/dev/null)
cuobj=$(command -v cuobjdump || python3 -c "import triton, os; print(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/cuobjdump'))" 2>/dev/null)
[ -n "$so" ] && [ -x "$cuobj" ] && "$cuobj" --list-elf "$so" 2>&1 | tee -a "$OUT/env.txt"

# ---------------------------------------------------------------- tests
tests_rc=0 bench_rc=0 e2e_rc=0
if step tests; then
  say "GPU tests (log: $OUT/gpu_tests.log)"
  timeout 240 python3 -m pytest -q -rP -p no:cacheprovider tests/test_ops_cuda.py \
    tests/pipelines/test_accelerate.py tests/test_fused.py tests/pipelines/test_overlap.py \
    tests/test_flash.py -m gpu --durations=12 2>&1 | tee "$OUT/gpu_tests.log"
  tests_rc=$?
  say "tests rc=$tests_rc"
fi

# ---------------------------------------------------------------- benchmarks
if step e2e; then
  budget=$(( 520 - $(elapsed) ))
  [ $budget -lt 90 ] && budget=90
  say "end-to-end benchmark (row budget $(( budget - 40 ))s, log: $OUT/e2e.log)"
  timeout $budget python3 -c "
import runpy, sys
sys.path.append('$PWD/.whl/vae-site')  # after the image's packages
sys.argv = ['bench/e2e.py', '--out', '$OUT', '--budget', '$(( budget - 40 ))']
runpy.run_path('bench/e2e.py', run_name='__main__')
" 2>&1 | tee "$OUT/e2e.log"
  e2e_rc=$?
fi
if step kernels; then
  budget=$(( 560 - $(elapsed) - 30 ))
  if [ $budget -lt 45 ]; then
    say "kernel benchmark skipped: ${budget}s left for it (run it alone with STEPS=kernels)"
  else
    say "kernel benchmark (budget ${budget}s, log: $OUT/bench.log)"
    timeout $(( budget + 30 )) python3 bench/kernels.py --out "$OUT" --budget "$budget" 2>&1 | tee "$OUT/bench.log"
    bench_rc=$?
  fi
fi
say "done: build ok, tests rc=$tests_rc, bench rc=$bench_rc, e2e rc=$e2e_rc"
exit $(( tests_rc != 0 || bench_rc != 0 || e2e_rc != 0 ))
