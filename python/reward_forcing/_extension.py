"""Loads the compiled extension ``reward_forcing._C`` after checking that it was built for the torch
that is running: a torch extension only loads into the torch it was compiled against."""

from __future__ import annotations

import importlib
from typing import Any

import torch

_C: Any = None
BUILD_ERROR: str | None = None

_build_info: Any = None
try:
    _build_info = importlib.import_module(f"{__package__}._build_info")
except ImportError:  # running from a source tree without a build: reference backend only
    BUILD_ERROR = "reward_forcing._C is not built (install the package with pip)"

if _build_info is not None:
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"reward_forcing was built against torch {_build_info.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; reinstall it with the running torch: "
            "pip install --no-build-isolation --force-reinstall --no-deps <reward_forcing source>"
        )
    _C = importlib.import_module("reward_forcing._C")

HAS_CPP: bool = _C is not None
HAS_CUDA_KERNELS: bool = bool(_C is not None and _C.with_cuda)
