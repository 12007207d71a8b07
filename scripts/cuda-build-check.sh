#!/usr/bin/env bash
# Configures, compiles and links the extension WITH its CUDA kernels (sm_90a) on a machine without a
# GPU, in the CUDA-torch venv that scripts/cuda-build-env.sh makes (or reuses; see there).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(bash scripts/cuda-build-env.sh | tail -1)
# shellcheck disable=SC1091
source "$venv/cuda-build.env"
out=$(mktemp -d)
"$venv/bin/pip" wheel --no-build-isolation --no-deps -C build-dir=build/cuda -w "$out" .
whl=$(ls "$out"/*.whl)
"$venv/bin/python" - "$whl" <<'PY'
import sys, zipfile, subprocess, tempfile, os
whl = sys.argv[1]
with zipfile.ZipFile(whl) as z, tempfile.TemporaryDirectory() as d:
    so = [n for n in z.namelist() if n.startswith("reward_forcing/_C") and n.endswith(".so")][0]
    z.extract(so, d)
    import triton, glob
    cuobjdump = (glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")) + ["cuobjdump"])[0]
    sass = subprocess.run([cuobjdump, "--list-elf", os.path.join(d, so)], capture_output=True, text=True).stdout
    print(f"{whl}: {so}\n{sass.strip() or '(cuobjdump found no device code)'}")
    assert "sm_90a" in sass, "no sm_90a device code in the extension"
PY
