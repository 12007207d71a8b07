"""Model-free video metrics (docs/design.md §8): dynamic degree, frame copying, drift, temporal flicker.

Videos are [F, H, W, 3] RGB, uint8 or float in [0, 1], numpy or torch. Flow is OpenCV Farneback on
grey levels; flow[t] relates frame t and t + 1, in pixels, (dx, dy). Each metric is a per-frame or
per-pair function (``flow_score``, :class:`CopyScore`, ``frame_stat``, ``colour_histogram``,
``pair_flicker``) and a summary, so that :func:`reward_forcing.eval.evaluate_frames` computes them
on a stream of frames in bounded memory; the whole-video functions below loop over them.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

_NO_FLOW: Any = None  # no initial flow (OpenCV's stubs do not say None is allowed)
_FARNEBACK: dict[str, Any] = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


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


def flow_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow [H, W, 2] from grey frame ``a`` to grey frame ``b``."""
    return cv2.calcOpticalFlowFarneback(a, b, _NO_FLOW, **_FARNEBACK)


def optical_flow(video, backward: bool = False) -> np.ndarray:
    """[F-1, H, W, 2] float32. Forward: frame_t(p) ≈ frame_t+1(p + flow[t](p)).
    Backward: frame_t+1(p) ≈ frame_t(p + flow[t](p))."""
    g = grey(video)
    pairs = zip(g[1:], g[:-1]) if backward else zip(g[:-1], g[1:])
    flows = [flow_pair(a, b) for a, b in pairs]
    return np.stack(flows) if flows else np.zeros((0, *g.shape[1:], 2), np.float32)


def _segment(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def flow_score(flow: np.ndarray) -> float:
    """One pair's motion: the mean of its top 5 % flow magnitudes (pixels)."""
    mag = np.hypot(flow[..., 0], flow[..., 1]).ravel()
    top = max(1, int(0.05 * mag.size))
    return float(np.sort(mag)[-top:].mean())


def dynamic_degree(video=None, flow: np.ndarray | None = None) -> dict:
    """VBench-style: per consecutive pair the mean of the top 5 % flow magnitudes (pixels); a pair
    moves above 6·min(H, W)/256; the video is dynamic if at least max(1, round(N/4)) of its N pairs
    move. Give the video or its forward flow."""
    flow = optical_flow(video) if flow is None else flow
    return dynamic_summary(np.array([flow_score(f) for f in flow]), *flow.shape[1:3])


def dynamic_summary(score: np.ndarray, h: int, w: int) -> dict:
    """:func:`dynamic_degree` from the per-pair scores of an ``h x w`` video."""
    n = len(score)
    threshold = 6.0 * min(h, w) / 256
    moving = score > threshold
    return {
        "pair_score": score,
        "moving": moving,
        "threshold": threshold,
        "moving_fraction": float(moving.mean()) if n else 0.0,
        "dynamic": bool(n) and int(moving.sum()) >= max(1, round(n / 4)),
    }


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
    x = as_video(video)
    score = CopyScore(x[:ref_frames], np.median(x, axis=0), noise_level)
    return copy_summary(np.array([score(frame) for frame in x]), segment)


class CopyScore:
    """:func:`frame_copying`'s similarity of one frame, given the reference frames and the
    temporal median (a median of evenly spaced frames when the video is streamed)."""

    def __init__(self, refs: np.ndarray, median: np.ndarray, noise_level: float = 1.0):
        self.median, self.noise_level = np.asarray(median, np.float32), noise_level
        self.refs = np.asarray(refs).astype(np.float32)
        self.ref_dev = np.array([self._dev(r) for r in self.refs])

    def _dev(self, frame: np.ndarray) -> float:
        return float(np.abs(frame - self.median).sum())

    def __call__(self, frame: np.ndarray) -> float:
        frame = frame.astype(np.float32)
        dist = np.abs(frame - self.refs).reshape(len(self.refs), -1).sum(axis=1)
        floor = max(self.noise_level * frame.size, 1e-6)
        return float(np.max(1.0 - dist / np.maximum(self._dev(frame) + self.ref_dev, floor)))


def copy_summary(per_frame: np.ndarray, segment: float = 0.25) -> dict:
    return {"per_frame": per_frame, "late_mean": float(per_frame[-_segment(len(per_frame), segment) :].mean())}


def frame_stats(video) -> dict[str, np.ndarray]:
    """Per-frame quality statistics in [0, 1]-ish units: brightness and contrast (mean, std of grey),
    saturation (mean HSV S), sharpness (mean |Laplacian| of grey)."""
    rows = [frame_stat(f) for f in as_video(video)]
    return {k: np.array([r[k] for r in rows], np.float32) for k in STATS}


STATS = ("brightness", "contrast", "saturation", "sharpness")


def frame_stat(frame: np.ndarray) -> dict[str, float]:
    """:func:`frame_stats` of one uint8 RGB frame."""
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    sat = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    return {
        "brightness": float(g.mean()),
        "contrast": float(g.std()),
        "saturation": float(sat.mean() / 255),
        "sharpness": float(np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean()),
    }


def colour_histograms(video, bins: int = 8) -> np.ndarray:
    """[F, bins³] normalised joint RGB histograms."""
    return np.stack([colour_histogram(f, bins) for f in as_video(video)])


def colour_histogram(frame: np.ndarray, bins: int = 8) -> np.ndarray:
    idx = (frame.astype(np.int64) * bins) // 256
    flat = (idx[..., 0] * bins + idx[..., 1]) * bins + idx[..., 2]
    hist = np.bincount(flat.ravel(), minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


def drift(video, segment: float = 0.25) -> dict:
    """Change of the frame statistics between the first and the last `segment` of the video.
    `drift` is the total-variation distance (in [0, 1]) between the mean colour histograms of the
    two segments: 0 when the colour content keeps its statistics (objects may move), 1 when the
    end shares no colours with the start. The statistics' means and changes are also returned."""
    hist = colour_histograms(video)
    n = _segment(len(hist), segment)
    return drift_summary(frame_stats(video), hist[:n].mean(0), hist[-n:].mean(0), segment)


def drift_summary(stats: dict, first_hist: np.ndarray, last_hist: np.ndarray, segment: float = 0.25) -> dict:
    """:func:`drift` from the per-frame statistics and the mean histograms of the two segments."""
    n = _segment(len(next(iter(stats.values()))), segment)
    first = {k: float(v[:n].mean()) for k, v in stats.items()}
    last = {k: float(v[-n:].mean()) for k, v in stats.items()}
    return {
        "stats": stats,
        "first": first,
        "last": last,
        "change": {k: last[k] - first[k] for k in stats},
        "drift": float(0.5 * np.abs(first_hist - last_hist).sum()),
    }


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
    per_pair = np.array([pair_flicker(x[t], x[t + 1], flow[t], back_flow[t]) for t in range(len(flow))])
    return flicker_summary(per_pair)


def pair_flicker(a: np.ndarray, b: np.ndarray, flow: np.ndarray, back_flow: np.ndarray) -> float:
    """:func:`flicker` of one pair of frames (uint8 RGB) with its forward and backward flow."""
    fw_at = _warp(flow, back_flow)  # forward flow at the matched point in frame t
    err = np.sum((fw_at + back_flow) ** 2, -1)
    bound = 0.01 * (np.sum(fw_at**2, -1) + np.sum(back_flow**2, -1)) + 0.5
    valid = err <= bound
    diff = np.abs(_warp(a, back_flow).astype(np.float32) - b).mean(-1) / 255
    return float(diff[valid].mean() if valid.any() else diff.mean())


def flicker_summary(per_pair: np.ndarray) -> dict:
    return {"per_pair": per_pair, "mean": float(per_pair.mean()) if len(per_pair) else 0.0}
