"""Training data from the procedural world (:mod:`reward_forcing.world`): clips rendered on the fly,
encoded with the pixel codec, with their prompts. Also the world's training prompts for the stages
that need prompts only (ODE init, DMD)."""
from __future__ import annotations

import numpy as np
import torch

from ..models.pixel_codec import PixelCodec
from ..world import render, render_batch, sample_scene


class WorldClips:
    """``sample(n, rng)`` -> (latents ``[n, C, latent_frames, H/s, W/s]``, prompts): scenes of the
    ``split`` ("train": the held-out colour x shape x direction combinations never appear), each
    clip starting at frame 0 with probability ``start_at_zero`` (the prompt's direction is what the
    first frames show) and otherwise at a random frame of the first ``max_start`` (after bounces:
    what a stream must continue). Rendering: with numpy in this process, or in ``workers``
    processes, or with torch on ``render_device`` (a GPU renders a batch in milliseconds; the
    same pixels)."""

    def __init__(self, codec: PixelCodec, latent_frames: int, height: int = 64, width: int = 64,
                 fps: float = 16.0, split: str = "train", start_at_zero: float = 0.5,
                 max_start: int = 160, workers: int = 0, render_device=None):
        self.codec, self.frames = codec, latent_frames * codec.temporal_scale
        self.height, self.width, self.fps, self.split = height, width, fps, split
        self.start_at_zero, self.max_start = start_at_zero, max_start
        self.render_device = render_device
        self._pool = None
        if workers > 0:  # rendering (~5 ms a clip) would otherwise starve a GPU
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[str]]:
        """Scenes and start frames are drawn here from ``rng`` (so a run resumes exactly with or
        without workers); the rendering is spread over the worker processes, if any."""
        jobs = []
        for _ in range(n):
            scene = sample_scene(rng, height=self.height, width=self.width, fps=self.fps, split=self.split)
            start = 0 if rng.random() < self.start_at_zero else int(rng.integers(0, self.max_start))
            jobs.append((scene, self.frames, start))
        prompts = [job[0].prompt for job in jobs]
        if self.render_device is not None:
            scenes, _, starts = zip(*jobs)
            return self.codec.encode(render_batch(scenes, self.frames, starts, self.render_device)), prompts
        if self._pool is None:
            videos = [_render(*job) for job in jobs]
        else:
            videos = list(self._pool.map(_render, *zip(*jobs), chunksize=max(1, n // 16)))
        return self.codec.encode(torch.from_numpy(np.stack(videos))), prompts


def _render(scene, frames: int, start: int) -> np.ndarray:
    return render(scene, frames, start)[0]


def world_prompts(n: int = 4096, seed: int = 0, split: str = "train") -> list[str]:
    """``n`` prompts of random ``split`` scenes (the same for a seed)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split=split).prompt for _ in range(n)]
