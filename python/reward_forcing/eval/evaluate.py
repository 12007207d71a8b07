"""All metrics of one video in one call: the per-video record that report.write_report takes.

:func:`evaluate_frames` streams: it reads the frames twice (a first pass for the frame count, the
reference frames and an evenly spaced sample; a second for everything else) and holds only a
few frames plus that sample, so memory does not grow with the clip's length (a 60-s 832x480 clip
evaluates in well under 2 GiB). :func:`evaluate_video` is the same on an in-memory array.
"""

from __future__ import annotations

from typing import Callable, Iterable

import cv2
import numpy as np

from .metrics import (
    STATS,
    CopyScore,
    _segment,
    as_video,
    colour_histogram,
    copy_summary,
    drift_summary,
    dynamic_summary,
    flicker_summary,
    flow_pair,
    flow_score,
    frame_stat,
    pair_flicker,
)
from .world_scores import estimate_background, frame_objects, world_summary

SAMPLE_FRAMES = 64  # frames kept for the temporal median (frame copying) and the background ...
SAMPLE_BYTES = 128 * 2**20  # ... and at most this many bytes of them
MAX_PIXELS = 4096 * 4096  # a frame's working set is ~40 bytes a pixel: larger ones are refused


def evaluate_video(video, prompt=None, *, fps: float = 16.0, ref_frames: int = 4, segment: float = 0.25) -> dict:
    """All metrics of one video (flow computed once). prompt: a world prompt (text or PromptSpec)
    to add the ground-truth world scores. Returns {"summary": scalars, "series": per-frame or
    per-pair curves, "fps", "frames", "threshold"} — the input of report.write_report."""
    x = as_video(video)
    return evaluate_frames(lambda: iter(x), prompt, fps=fps, ref_frames=ref_frames, segment=segment, sample=x)


def _sample(frames: Iterable[np.ndarray], ref_frames: int, limit: int):
    """(frame count, the first ``ref_frames`` frames, <= ``limit`` evenly spaced frames)."""
    count, refs, kept, stride = 0, [], [], 1
    for frame in frames:
        if count == 0:
            if frame.ndim != 3 or frame.shape[0] * frame.shape[1] > MAX_PIXELS:
                raise ValueError(
                    f"frames of {frame.shape[1]}x{frame.shape[0]} pixels: eval scores at "
                    f"most {MAX_PIXELS / 1e6:.1f} Mpixel frames"
                )
            limit = max(2, min(limit, SAMPLE_BYTES // max(frame.nbytes, 1)))
        if count < ref_frames:
            refs.append(frame)
        if count % stride == 0:
            kept.append(frame)
            if len(kept) > limit:  # keep every other one, and take half as many from now on
                kept, stride = kept[::2], 2 * stride
        count += 1
    return count, refs, kept


def evaluate_frames(
    open_frames: Callable[[], Iterable[np.ndarray]],
    prompt=None,
    *,
    fps: float = 16.0,
    ref_frames: int = 4,
    segment: float = 0.25,
    sample=None,
    sample_frames: int = SAMPLE_FRAMES,
) -> dict:
    """:func:`evaluate_video` on a stream: ``open_frames()`` returns a fresh iterable of uint8
    ``[H, W, 3]`` RGB frames (it is called twice). The temporal median of frame copying and the
    world background come from ``sample`` (default: ``sample_frames`` evenly spaced frames; the
    whole video when it is that short). ValueError for fewer than 2 frames."""
    from ..world import parse_prompt

    spec = None if prompt is None else (parse_prompt(prompt) if isinstance(prompt, str) else prompt)
    count, refs, kept = _sample(open_frames(), ref_frames, sample_frames)
    if count < 2:
        raise ValueError(f"{count} frame(s); need at least 2 to measure motion")
    kept = np.stack(kept if sample is None else list(sample))
    h, w = kept.shape[1:3]
    copy = CopyScore(np.stack(refs), np.median(kept, axis=0))
    background = estimate_background(kept)
    del kept
    n_seg = _segment(count, segment)
    first_hist, last_hist = np.zeros(8**3), np.zeros(8**3)
    copying: list[float] = []
    scores: list[float] = []
    flick: list[float] = []
    objects: list[tuple] = []
    stats: dict[str, list[float]] = {k: [] for k in STATS}
    prev: np.ndarray = np.zeros(0)
    prev_grey: np.ndarray = np.zeros(0)
    for t, frame in enumerate(open_frames()):
        if frame.shape != (h, w, 3):
            raise ValueError(f"frame {t} is {frame.shape}, the video is {(h, w, 3)}")
        copying.append(copy(frame))
        for k, v in frame_stat(frame).items():
            stats[k].append(v)
        hist = colour_histogram(frame)
        if t < n_seg:
            first_hist += hist
        if t >= count - n_seg:
            last_hist += hist
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if t > 0:
            forward, backward = flow_pair(prev_grey, grey), flow_pair(grey, prev_grey)
            scores.append(flow_score(forward))
            flick.append(pair_flicker(prev, frame, forward, backward))
        if spec is not None:
            objects.append(frame_objects(frame, background, [o.colour for o in spec.objects]))
        prev, prev_grey = frame, grey
    if len(copying) != count:
        raise ValueError(f"the video gave {count} frames, then {len(copying)}")
    dyn = dynamic_summary(np.array(scores), h, w)
    copied = copy_summary(np.array(copying), segment)
    dr = drift_summary(
        {k: np.array(v, np.float32) for k, v in stats.items()}, first_hist / n_seg, last_hist / n_seg, segment
    )
    fl = flicker_summary(np.array(flick))
    summary = {
        "dynamic_degree": float(dyn["dynamic"]),
        "moving_fraction": dyn["moving_fraction"],
        "frame_copying": copied["late_mean"],
        "drift": dr["drift"],
        "flicker": fl["mean"],
        **{f"{k}_change": v for k, v in dr["change"].items()},
    }
    result = {
        "summary": summary,
        "fps": fps,
        "frames": count,
        "threshold": dyn["threshold"],
        "series": {
            "flow_score": dyn["pair_score"],
            "frame_copying": copied["per_frame"],
            "flicker": fl["per_pair"],
            **dr["stats"],
        },
    }
    if spec is not None:
        area, centre, rest_blob, shape = (np.array(r) for r in zip(*objects))
        world = world_summary(spec, background, area, centre, rest_blob, shape, (h, w), fps=fps, segment=segment)
        summary.update(
            {
                k: world[k]
                for k in (
                    "found",
                    "colour_right",
                    "shape_right",
                    "direction_right",
                    "keeps_moving",
                    "background_right",
                    "adherence",
                )
            }
        )
        result["world"] = world
    return result
