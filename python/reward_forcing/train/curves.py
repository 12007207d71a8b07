"""Training curves: every numeric field of a run's ``log.jsonl`` against the step, one panel each
(log scale where a field is positive), as a PNG (what ``reward-forcing train`` leaves next to its
checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_SKIP = {"step", "seconds"}


def read_log(log) -> list[dict]:
    """The records of a ``log.jsonl``, skipping a line that does not parse (a write cut short)."""
    records = []
    for line in Path(log).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_log(log, out, smooth: int = 25) -> Path:
    """Plots ``log`` (jsonl) into ``out`` (PNG); ``smooth``-step running means over the raw points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log)
    keys = sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    if not keys:
        raise ValueError(f"{log}: no numeric fields to plot")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = np.array([r["step"] for r in records if key in r])
        values = np.array([r[key] for r in records if key in r], dtype=float)
        ax.plot(steps, values, lw=0.5, alpha=0.4)
        if len(values) >= smooth > 1:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1 :], np.convolve(values, kernel, mode="valid"), lw=1.5)
        if (values > 0).all():
            ax.set_yscale("log")  # losses span decades (and change scale between stages)
        ax.set_title(key)
        ax.set_xlabel("step")
    log = Path(log)
    fig.suptitle(log.parent.name if log.name == "log.jsonl" else log.stem)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
