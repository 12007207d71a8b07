"""Loads the compiled extension ``reward_forcing._C`` after checking that it was built for the torch
that is running: a torch extension only loads into the torch it was compiled against."""
from __future__ import annotations

import importlib

import torch

_C = None
BUILD_ERROR: str | None = None

try:
    from . import _build_info
except ImportError:  # running from a source tree without a build: reference backend only
    _build_info = None
    BUILD_ERROR = "reward_forcing._C is not built (install the package with pip)"

if _build_info is not None:
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"reward_forcing was built against torch {_build_info.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; reinstall it with the running torch: "
            "pip install --no-build-isolation --force-reinstall --no-deps <reward_forcing source>"
        )
    _C = importlib.import_module("reward_forcing._C")

HAS_CPP = _C is not None
HAS_CUDA_KERNELS = bool(_C is not None and _C.with_cuda)
