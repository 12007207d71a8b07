#!/usr/bin/env bash
# Makes (or reuses) a venv with the CUDA build of torch, for compiling and link-checking the CUDA
# kernels on a machine that has nvcc but no GPU (docs/design.md §3 "Compile check without a GPU").
#   usage: scripts/cuda-build-env.sh [VENV_DIR]   (default $RF_CUDA_VENV or ~/.cache/rf-cuda-venv)
# It writes VENV/cuda-build.env — source it before building — and prints the venv path last:
#   venv=$(scripts/cuda-build-env.sh | tail -1) && source "$venv/cuda-build.env"
#   "$venv/bin/pip" wheel --no-build-isolation --no-deps -w /tmp/wheels .
# About 5.5 GB on disk; the first run takes a few minutes. CUDA_TORCH_SPEC overrides the torch pin.
set -euo pipefail
venv=${1:-${RF_CUDA_VENV:-$HOME/.cache/rf-cuda-venv}}
torch_spec=${CUDA_TORCH_SPEC:-torch==2.14.1}   # the CUDA 13 wheel of the package index in use
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null ||
  "$py" -m pip install -q "$torch_spec"
"$py" -m pip install -q numpy pybind11 ninja "scikit-build-core>=0.10" "cmake>=3.26" nvidia-cutlass
nvcc=$(command -v nvcc) || { echo "cuda-build-env: nvcc not found on PATH" >&2; exit 1; }
# The nvcc on PATH may be a wrapper script (`exec /usr/local/cuda-X/bin/nvcc "$@"`): find the real
# toolkit root, which Torch's CMake needs.
real=$(sed -n 's/^exec \([^ ]*nvcc\).*/\1/p' "$nvcc" 2>/dev/null | head -1)
cuda_root=$(dirname "$(dirname "$(readlink -f "${real:-$nvcc}")")")
[ -x "$cuda_root/bin/nvcc" ] || cuda_root=/usr/local/cuda
# Torch's CMake looks for nvrtc; a local toolkit may lack it, the pip CUDA packages have it.
nvrtc=$("$py" - <<'PY'
import glob, os
import nvidia
hits = [h for p in nvidia.__path__ for h in glob.glob(os.path.join(p, "cu*", "lib", "libnvrtc.so.*"))]
print(hits[0] if hits else "")
PY
)
cat > "$venv/cuda-build.env" <<ENV
export CUDA_HOME=$cuda_root
export CUDACXX=$cuda_root/bin/nvcc
export TORCH_CUDA_ARCH_LIST=\${TORCH_CUDA_ARCH_LIST:-9.0a}
export CMAKE_ARGS="\${CMAKE_ARGS:-} -DCUDA_TOOLKIT_ROOT_DIR=$cuda_root -DCUDA_nvrtc_LIBRARY=$nvrtc"
ENV
echo "cuda-build-env: torch $("$py" -c 'import torch; print(torch.__version__, torch.version.cuda)'), nvcc at $cuda_root, nvrtc ${nvrtc:-missing}" >&2
echo "$venv"
