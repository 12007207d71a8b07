"""Trainer checkpoints (docs/design.md §6): ``out_dir/checkpoint-<step>.pt``, written atomically,
read with ``weights_only=True`` (tensors and plain Python values only), every random stream saved
so that a resumed run continues the same run exactly. The state itself is
:meth:`.loop.TrainLoop.state_dict`; this module holds the file format around it."""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_output, signals_deferred
from .curves import read_log

VERSION = 1


def latest_checkpoint(out_dir) -> Path | None:
    found = sorted(Path(out_dir).glob("checkpoint-*.pt"))
    return found[-1] if found else None


def rng_state(noise_rng: torch.Generator, prompt_rng: random.Random) -> dict:
    """The trainer's two global-batch streams and the process-wide torch / Python / numpy / CUDA
    states (numpy's legacy tuple with its key array as a tensor, so it loads with ``weights_only``)."""
    numpy_state: Any = np.random.get_state()
    name, keys, pos, has_gauss, cached = numpy_state
    return {
        "noise": noise_rng.get_state(),
        "prompt": prompt_rng.getstate(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(rng: dict, noise_rng: torch.Generator, prompt_rng: random.Random) -> None:
    noise_rng.set_state(rng["noise"])
    prompt_rng.setstate(rng["prompt"])
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_checkpoint(state: dict, out_dir: Path, keep: int) -> Path:
    """``state`` to ``out_dir/checkpoint-<step>.pt`` (a ``.part`` file, fsync, rename; removed on
    errors and SIGTERM/SIGHUP: :func:`reward_forcing.files.atomic_output`); keeps the newest ``keep``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"checkpoint-{state['step']:08d}.pt"
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        with signals_deferred():  # a signal inside torch.save's writer would crash, not exit
            torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    for old in sorted(out_dir.glob("checkpoint-*.pt"))[:-keep]:
        old.unlink()
    return path


def read_checkpoint(path: Path) -> dict:
    """The state in ``path``; a ValueError naming the file for truncated, corrupt or foreign files."""
    with warnings.catch_warnings(record=True) as caught:  # torch warns before refusing a foreign pickle
        warnings.simplefilter("always")
        try:  # zip and unpickling (weights_only) errors
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    for w in caught:  # a readable file: its warnings as they were
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a checkpoint of this trainer (a {type(state).__name__})")
    return state


def truncate_log(log: Path, step: int) -> None:
    """Drops the log records of steps from ``step`` on (an interrupted run logged them; the
    resumed run logs them again)."""
    if not log.is_file():
        return
    kept = [r for r in read_log(log) if r.get("step", float("inf")) < step]
    with atomic_output(log) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
