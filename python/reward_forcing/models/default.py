"""The embedded default model: a WAN_WORLD causal student distilled on the procedural world
(teacher -> ODE init -> Re-DMD, ``configs/world-*.yaml``), shipped inside the package as one
safetensors file whose metadata holds the model config and the streaming settings it was trained
for (pixel size, frame rate, cache geometry, schedule). It pairs with the packaged MiniLM text
encoder and the pixel codec, so it needs no download and no path.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_output
from .causal_wan import CausalWanModel
from .loading import safetensors_config

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "world-student.safetensors"
# Pipeline keyword arguments a default-model file must record.
SETTINGS = ("height", "width", "fps", "sink_frames", "window_frames", "chunk_frames", "alpha", "steps", "shift")


def available(path=None) -> bool:
    return Path(path or WEIGHTS).is_file()


def export(
    model: CausalWanModel,
    settings: dict,
    path=WEIGHTS,
    *,
    provenance: dict | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Writes ``model`` (in ``dtype``: float16 halves the file; the pipeline computes in float32)
    with its config, the streaming ``settings`` (all of :data:`SETTINGS`) and ``provenance`` (free
    JSON: checkpoints, steps, metrics) atomically to ``path``."""
    missing = [k for k in SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"settings lack {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "config": json.dumps(dataclasses.asdict(model.config)),
        "settings": json.dumps({k: settings[k] for k in SETTINGS}),
        "provenance": json.dumps(provenance or {}),
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path=WEIGHTS) -> dict:
    """``{"config": WanConfig, "settings": dict, "provenance": dict}`` of a default-model file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"default model weights not found: {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if not {"config", "settings"} <= set(meta):
        raise ValueError(f"{path}: not a default-model file (metadata keys {sorted(meta)})")
    return {
        "config": safetensors_config(path),
        "settings": json.loads(meta["settings"]),
        "provenance": json.loads(meta.get("provenance", "{}")),
    }


def pipeline_kwargs(settings: dict) -> dict:
    """The recorded ``settings`` as StreamingPipeline keyword arguments (steps + shift -> schedule)."""
    from ..scheduler import FewStepFlowSchedule

    geometry = {k: v for k, v in settings.items() if k not in ("steps", "shift")}
    return geometry | {"schedule": FewStepFlowSchedule(tuple(settings["steps"]), settings["shift"])}


def load(path=WEIGHTS, *, device="cpu", dtype: torch.dtype = torch.float32) -> tuple[CausalWanModel, dict]:
    """The model (strict load: every key, every shape) and its streaming settings."""
    from .loading import load_causal_wan

    meta = read_metadata(path)
    return load_causal_wan(path, meta["config"], dtype=dtype, device=device).eval(), meta["settings"]
