"""Rewards for Re-DMD: videos -> one score per sample, without gradient (docs/design.md §5).

Videos are ``[B, F, H, W, 3]`` RGB, uint8 or float in [0, 1], numpy or torch. Scores are
z-normalised with FIXED constants stored with the reward (calibrated once on reference videos),
never with batch statistics: a batch z-score is 0 at batch size 1 and would turn Re-DMD into DMD.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..eval.metrics import as_video, grey

# FlowMotionReward's raw-score constants, from :meth:`FlowMotionReward.calibrate` on
# :func:`synthetic_motion_videos` (64 clips of 9 frames at 64 x 64, speeds 0-8 px/frame at
# 256 px, seed 0): a static clip then scores about -2.4, 4 px/frame +0.3, 8 px/frame +1.3.
FLOW_MOTION_MEAN = 1.4441
FLOW_MOTION_STD = 0.5733

_NO_FLOW: Any = None  # no initial flow (OpenCV's stubs do not say None is allowed)
_FARNEBACK: dict[str, Any] = dict(pyr_scale=0.5, levels=3, winsize=9, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def _videos(videos) -> list[np.ndarray]:
    if hasattr(videos, "detach"):
        videos = videos.detach().float().cpu().numpy() if videos.dtype != torch.uint8 else videos.cpu().numpy()
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected videos [B, F, H, W, 3], got shape {videos.shape}")
    return [as_video(v) for v in videos]


class Reward:
    """The plugin interface: ``reward(videos) -> float32 [B]`` (CPU tensor, no grad), z-normalised
    as ``(raw - mean) / std`` with the reward's stored constants."""

    mean: float = 0.0
    std: float = 1.0

    def raw(self, video: np.ndarray) -> float:
        """The un-normalised score of one uint8 video ``[F, H, W, 3]``."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, videos) -> torch.Tensor:
        raw = torch.tensor([self.raw(v) for v in _videos(videos)], dtype=torch.float64)
        return ((raw - self.mean) / self.std).float()


@dataclass
class FlowMotionReward(Reward):
    """Motion amount from OpenCV Farneback optical flow: ``log1p`` of the mean flow magnitude per
    frame pair in pixels of a 256-pixel frame (frames are resized so their short side is at most
    ``max_side``). Static video scores low, fast coherent motion high."""

    mean: float = FLOW_MOTION_MEAN
    std: float = FLOW_MOTION_STD
    max_side: int = 128

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def raw(self, video: np.ndarray) -> float:
        g = grey(video)
        if len(g) < 2:
            raise ValueError("a motion reward needs at least 2 frames")
        h, w = g.shape[1:]
        scale = min(1.0, self.max_side / min(h, w))
        if scale < 1:
            g = np.stack([cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) for f in g])
        mags = [
            np.hypot(*np.moveaxis(cv2.calcOpticalFlowFarneback(a, b, _NO_FLOW, **_FARNEBACK), -1, 0)).mean()
            for a, b in zip(g[:-1], g[1:])
        ]
        return float(np.log1p(np.mean(mags) * 256 / min(g.shape[1:])))

    def calibrate(self, videos) -> "FlowMotionReward":
        """A copy whose constants are the mean/std of the raw scores of reference ``videos``."""
        raw = np.array([self.raw(v) for v in _videos(videos)])
        return FlowMotionReward(float(raw.mean()), float(max(raw.std(), 1e-6)), self.max_side)


def synthetic_motion_videos(
    n: int = 64, frames: int = 9, size: int = 64, max_speed: float = 8.0, seed: int = 0
) -> np.ndarray:
    """Smooth random textures translating at a random speed in ``[0, max_speed]`` pixels per frame
    (of a 256-pixel frame) in a random direction: uint8 ``[n, frames, size, size, 3]``. The
    calibration set of :data:`FLOW_MOTION_MEAN`/``STD``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        speed = rng.uniform(0, max_speed) * size / 256
        angle = rng.uniform(0, 2 * np.pi)
        out[i] = translating_texture(frames, size, speed * np.cos(angle), speed * np.sin(angle), rng)
    return out


def translating_texture(frames: int, size: int, dx: float, dy: float, rng) -> np.ndarray:
    """A smooth random colour texture moving by ``(dx, dy)`` pixels per frame: ``[F, size, size, 3]``."""
    big = size * 2
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (big, big, 3)).astype(np.float32), (0, 0), 2.0)
    tex = cv2.normalize(tex, np.empty_like(tex), 0, 255, cv2.NORM_MINMAX)
    video = []
    for f in range(frames):
        m = np.array([[1, 0, -big / 4 - dx * f], [0, 1, -big / 4 - dy * f]], np.float32)
        video.append(cv2.warpAffine(tex, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.clip(np.stack(video), 0, 255).astype(np.uint8)
