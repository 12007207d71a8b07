"""Model-free video metrics (docs/design.md §8): dynamic degree, frame copying, drift, temporal flicker.

Videos are [F, H, W, 3] RGB, uint8 or float in [0, 1], numpy or torch. Flow is OpenCV Farneback on
grey levels; flow[t] relates frame t and t + 1, in pixels, (dx, dy).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

_NO_FLOW: Any = None  # no initial flow (OpenCV's stubs do not say None is allowed)
_FARNEBACK: dict[str, Any] = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                  flags=0)


def as_video(video) -> np.ndarray:
    """uint8 [F, H, W, 3] from a numpy array or torch tensor, uint8 or float in [0, 1]."""
    if hasattr(video, "detach"):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video [F, H, W, 3], got shape {video.shape}")
    if video.dtype != np.uint8:
        video = np.rint(np.clip(video.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    return video


def grey(video) -> np.ndarray:
    video = as_video(video)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video])


def optical_flow(video, backward: bool = False) -> np.ndarray:
    """[F-1, H, W, 2] float32. Forward: frame_t(p) ≈ frame_t+1(p + flow[t](p)).
    Backward: frame_t+1(p) ≈ frame_t(p + flow[t](p))."""
    g = grey(video)
    pairs = zip(g[1:], g[:-1]) if backward else zip(g[:-1], g[1:])
    flows = [cv2.calcOpticalFlowFarneback(a, b, _NO_FLOW, **_FARNEBACK) for a, b in pairs]
    return np.stack(flows) if flows else np.zeros((0, *g.shape[1:], 2), np.float32)


def _segment(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def dynamic_degree(video=None, flow: np.ndarray | None = None) -> dict:
    """VBench-style: per consecutive pair the mean of the top 5 % flow magnitudes (pixels); a pair
    moves above 6·min(H, W)/256; the video is dynamic if at least max(1, round(N/4)) of its N pairs
    move. Give the video or its forward flow."""
    flow = optical_flow(video) if flow is None else flow
    n, h, w = flow.shape[:3]
    mag = np.hypot(flow[..., 0], flow[..., 1]).reshape(n, -1)
    top = max(1, int(0.05 * h * w))
    score = np.sort(mag, axis=1)[:, -top:].mean(axis=1) if n else np.zeros(0)
    threshold = 6.0 * min(h, w) / 256
    moving = score > threshold
    return {"pair_score": score, "moving": moving, "threshold": threshold,
            "moving_fraction": float(moving.mean()) if n else 0.0,
            "dynamic": bool(n) and int(moving.sum()) >= max(1, round(n / 4))}


def frame_copying(video, ref_frames: int = 4, segment: float = 0.25, noise_level: float = 1.0) -> dict:
    """Similarity of each frame to the most similar of the first ref_frames frames (the first
    chunk), and its mean over the last `segment` fraction of the video.

    sim(t, r) = 1 − |x_t − x_r|₁ / (|x_t − m|₁ + |x_r − m|₁), m the per-pixel temporal median of the
    video (its static content). By the triangle inequality sim ∈ [0, 1]: 1 for an exact copy, 0 when
    what changed at t and at r lies in disjoint places (e.g. an object moved away). Normalising by
    the change against m rather than by 255 makes it independent of how much of the frame is static
    background; a frame equal to m (a fully static video) counts as a copy (1). The denominator
    has a floor of ``noise_level`` grey levels per value, so that codec noise on a frozen video
    (differences of a few hundredths of a level everywhere) reads as a copy, not as change.
    """
    x = as_video(video).astype(np.float32)
    median = np.median(x, axis=0)
    dev = np.abs(x - median).reshape(len(x), -1).sum(axis=1)
    refs = x[:ref_frames]
    per_frame = np.empty(len(x))
    for t, frame in enumerate(x):
        dist = np.abs(frame - refs).reshape(len(refs), -1).sum(axis=1)
        floor = max(noise_level * frame.size, 1e-6)
        per_frame[t] = np.max(1.0 - dist / np.maximum(dev[t] + dev[:len(refs)], floor))
    return {"per_frame": per_frame, "late_mean": float(per_frame[-_segment(len(x), segment):].mean())}


def frame_stats(video) -> dict[str, np.ndarray]:
    """Per-frame quality statistics in [0, 1]-ish units: brightness and contrast (mean, std of grey),
    saturation (mean HSV S), sharpness (mean |Laplacian| of grey)."""
    video = as_video(video)
    g = grey(video).astype(np.float32) / 255
    sat = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2HSV)[..., 1] for f in video]).astype(np.float32)
    lap = np.stack([np.abs(cv2.Laplacian(f, cv2.CV_32F)).mean() for f in g])
    return {"brightness": g.mean(axis=(1, 2)), "contrast": g.std(axis=(1, 2)),
            "saturation": sat.mean(axis=(1, 2)) / 255, "sharpness": lap}


def colour_histograms(video, bins: int = 8) -> np.ndarray:
    """[F, bins³] normalised joint RGB histograms."""
    video = as_video(video)
    idx = (video.astype(np.int64) * bins) // 256
    flat = (idx[..., 0] * bins + idx[..., 1]) * bins + idx[..., 2]
    hist = np.stack([np.bincount(f.ravel(), minlength=bins ** 3) for f in flat]).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def drift(video, segment: float = 0.25) -> dict:
    """Change of the frame statistics between the first and the last `segment` of the video.
    `drift` is the total-variation distance (in [0, 1]) between the mean colour histograms of the
    two segments: 0 when the colour content keeps its statistics (objects may move), 1 when the
    end shares no colours with the start. The statistics' means and changes are also returned."""
    stats = frame_stats(video)
    hist = colour_histograms(video)
    n = _segment(len(hist), segment)
    first = {k: float(v[:n].mean()) for k, v in stats.items()}
    last = {k: float(v[-n:].mean()) for k, v in stats.items()}
    return {"stats": stats, "first": first, "last": last,
            "change": {k: last[k] - first[k] for k in stats},
            "drift": float(0.5 * np.abs(hist[:n].mean(0) - hist[-n:].mean(0)).sum())}


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image sampled at p + flow(p), bilinear, edges replicated."""
    h, w = flow.shape[:2]
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
    m = grid + flow
    return cv2.remap(image, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def flicker(video, flow: np.ndarray | None = None, back_flow: np.ndarray | None = None) -> dict:
    """Temporal flicker: per pair, mean |warp(frame_t) − frame_t+1| (RGB, [0, 1] units) with frame t
    warped onto t+1 by the backward flow, over the pixels whose forward and backward flows agree
    (occluded and disoccluded pixels have no correspondence; Sundaram et al. 2010 consistency test).
    Near 0 for smooth motion, the brightness jump for frame-wise brightness jumps."""
    x = as_video(video)
    flow = optical_flow(x) if flow is None else flow
    back_flow = optical_flow(x, backward=True) if back_flow is None else back_flow
    per_pair = np.empty(len(flow))
    for t in range(len(flow)):
        fw_at = _warp(flow[t], back_flow[t])  # forward flow at the matched point in frame t
        err = np.sum((fw_at + back_flow[t]) ** 2, -1)
        bound = 0.01 * (np.sum(fw_at ** 2, -1) + np.sum(back_flow[t] ** 2, -1)) + 0.5
        valid = err <= bound
        diff = np.abs(_warp(x[t], back_flow[t]).astype(np.float32) - x[t + 1]).mean(-1) / 255
        per_pair[t] = diff[valid].mean() if valid.any() else diff.mean()
    return {"per_pair": per_pair, "mean": float(per_pair.mean()) if len(per_pair) else 0.0}
