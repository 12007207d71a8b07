#!/usr/bin/env bash
# Makes (or reuses) the project venv and installs reward_forcing into it, built against its torch.
#   usage: scripts/setup-venv.sh [VENV_DIR]   (default .venv; TORCH_SPEC overrides the torch pin,
#                                               EXTRAS the optional groups, default "test,lint")
# Everything else comes from pyproject.toml, the one dependency list: torch is installed first, then
# the build requirements, then the package WITHOUT build isolation with its dependencies and extras —
# the C++ extension must be compiled against the torch it runs with (docs/design.md §3 "Build").
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
torch_spec=${TORCH_SPEC:-torch==2.13.0}   # the CPU wheel; a CUDA torch works the same way
extras=${EXTRAS-test,lint}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$torch_spec"
"$py" -c 'import tomllib' 2>/dev/null || "$py" -m pip install -q tomli
mapfile -t build_requires < <("$py" - <<'PY'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY
)
"$py" -m pip install -q "${build_requires[@]}"
"$py" -m pip install -q --no-build-isolation ".${extras:+[$extras]}"
"$py" -c "import reward_forcing as rf, torch; print(f'reward_forcing installed: torch {torch.__version__}, C++ ops {rf.HAS_CPP}, CUDA kernels {rf.HAS_CUDA_KERNELS}')"
