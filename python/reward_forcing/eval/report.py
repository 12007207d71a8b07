"""Evaluation report: a markdown summary table, the full results as JSON, and PNG plots of the
metrics over time. Plots use matplotlib's Agg canvas directly (no pyplot, no global backend)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

# summary columns in table order, with how to read them
COLUMNS = {
    "dynamic_degree": "fraction of videos that are dynamic (VBench rule) ↑",
    "moving_fraction": "fraction of frame pairs that move ↑",
    "frame_copying": "late-segment similarity to the first frames ↓",
    "drift": "colour-histogram distance, first vs last segment ↓",
    "flicker": "motion-compensated frame difference ([0, 1]) ↓",
    "found": "prompted objects found (fraction of frames) ↑",
    "colour_right": "prompted colours present (fraction of frames) ↑",
    "shape_right": "prompted shapes right (fraction of frames) ↑",
    "direction_right": "prompted directions right (fraction of objects) ↑",
    "keeps_moving": "late pairs in which the objects move ↑",
    "background_right": "prompted background right ↑",
    "adherence": "mean of found, colour and direction ↑",
}
_PLOTS = {  # file stem -> (title, series shown, y label)
    "motion": ("Motion: mean of the top 5 % flow magnitudes", ("flow_score",), "pixels / frame"),
    "frame_copying": ("Frame copying: similarity to the first frames", ("frame_copying",), "similarity"),
    "flicker": ("Temporal flicker (motion-compensated)", ("flicker",), "mean |difference|"),
    "drift": ("Frame statistics over time", ("brightness", "contrast", "saturation", "sharpness"), ""),
}


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _videos(entry) -> list[dict]:
    return [dict(entry)] if isinstance(entry, Mapping) else list(entry)


def summarise(results: Mapping[str, Mapping | Sequence[Mapping]]) -> dict[str, dict]:
    """Per name: the mean of each summary scalar over its videos, and the number of videos."""
    out = {}
    for name, entry in results.items():
        videos = _videos(entry)
        keys = dict.fromkeys(k for v in videos for k in v["summary"])
        out[name] = {k: float(np.mean([v["summary"][k] for v in videos if k in v["summary"]])) for k in keys}
        out[name]["videos"] = len(videos)
    return out


def _mean_curve(videos: list[dict], key: str) -> np.ndarray:
    """Mean over videos, truncated to the shortest."""
    curves = [np.asarray(v["series"][key], np.float64) for v in videos if key in v["series"]]
    n = min((len(c) for c in curves), default=0)
    return np.mean([c[:n] for c in curves], axis=0) if n else np.zeros(0)


def _plot(results, stem: str, path: Path) -> None:
    title, keys, ylabel = _PLOTS[stem]
    fig = Figure(figsize=(7, 2.6 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        for name, entry in results.items():
            videos = _videos(entry)
            curve = _mean_curve(videos, key)
            ax.plot(np.arange(len(curve)) / videos[0].get("fps", 16.0), curve, label=name, lw=1.2)
        if key == "flow_score":
            threshold = _videos(next(iter(results.values())))[0]["threshold"]
            ax.axhline(threshold, color="k", ls="--", lw=0.8, label="moving threshold")
        ax.set_ylabel(ylabel or key)
        ax.set_title(key if len(keys) > 1 else title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    axes[0].legend(fontsize=8)
    if len(keys) > 1:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def _plot_summary(summary: dict[str, dict], path: Path) -> None:
    columns = [c for c in COLUMNS if any(c in s for s in summary.values())]
    fig = Figure(figsize=(2.0 + 0.8 * len(columns), 3.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(summary))
    for i, (name, s) in enumerate(summary.items()):
        ax.bar(np.arange(len(columns)) + i * width, [s.get(c, np.nan) for c in columns], width, label=name)
    ax.set_xticks(np.arange(len(columns)) + 0.4 - width / 2, columns, rotation=30, ha="right")
    ax.set_title("Summary (mean over videos)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100)


def write_report(
    results: Mapping[str, Mapping | Sequence[Mapping]], out_dir, title: str = "Evaluation"
) -> dict[str, Path]:
    """results: name (a model, a setting or one video) -> one evaluate_video record or a list of
    them (averaged). Writes report.md, results.json, summary.png and one PNG per metric over time;
    returns their paths."""
    if not results:
        raise ValueError("no results to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    paths = {"markdown": out / "report.md", "json": out / "results.json", "summary": out / "summary.png"}
    paths["json"].write_text(
        json.dumps(
            _jsonable({"title": title, "summary": summary, "videos": {k: _videos(v) for k, v in results.items()}}),
            indent=1,
        )
    )
    _plot_summary(summary, paths["summary"])
    for stem in _PLOTS:
        paths[stem] = out / f"{stem}.png"
        _plot(results, stem, paths[stem])

    columns = [c for c in COLUMNS if any(c in s for s in summary.values())]
    lines = [f"# {title}", "", "| | videos | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, s in summary.items():
        cells = [f"{s[c]:.3f}" if c in s else "" for c in columns]
        lines.append(f"| {name} | {s['videos']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *(f"- **{c}**: {COLUMNS[c]}" for c in columns),
        "",
        *(f"![{stem}]({paths[stem].name})" for stem in ("summary", *_PLOTS)),
        "",
    ]
    paths["markdown"].write_text("\n".join(lines))
    return paths
