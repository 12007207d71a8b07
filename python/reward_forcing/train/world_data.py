"""Training data from the procedural world (:mod:`reward_forcing.world`): clips rendered on the fly,
encoded with the pixel codec, with their prompts. Also the world's training prompts for the stages
that need prompts only (ODE init, DMD)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..models.pixel_codec import PixelCodec
from ..world import render, render_batch, sample_scene, with_places


class Clips(NamedTuple):
    """A batch of world clips: clean latents ``[n, C, F, H, W]``, their prompts, and the object
    coverage in the same latent layout (1 on object pixels, 0 on the background; what an
    object-weighted loss and the object/background error split use)."""

    latents: torch.Tensor
    prompts: list[str]
    masks: torch.Tensor


class WorldClips:
    """``sample(n, rng)`` -> :class:`Clips` of scenes of the ``split`` ("train": the held-out
    colour x shape x direction combinations never appear), each clip starting at frame 0 with
    probability ``start_at_zero`` (the prompt's direction is what the first frames show) and
    otherwise at a random frame of the first ``max_start`` (after bounces: what a stream must
    continue). Of the clips from frame 0, a share ``places`` have prompts that also say where each
    object starts (:func:`world.with_places`; a later start has left that place), and with
    ``snap_places`` they start exactly at their cell's one start. ``fixed > 0``
    draws the clips from a pool of that many, made once from ``fixed_seed`` (the overfit
    diagnostic: a model that cannot learn 16 clips is broken, not under-trained). Rendering: with
    numpy in this process, or in ``workers`` processes, or with torch on ``render_device`` (a GPU
    renders a batch in milliseconds; the same pixels)."""

    def __init__(
        self,
        codec: PixelCodec,
        latent_frames: int,
        height: int = 64,
        width: int = 64,
        fps: float = 16.0,
        split: str = "train",
        start_at_zero: float = 0.5,
        places: float = 0.0,
        snap_places: bool = False,
        max_start: int = 160,
        workers: int = 0,
        render_device=None,
        fixed: int = 0,
        fixed_seed: int = 0,
    ):
        if fixed < 0:
            raise ValueError(f"fixed must be >= 0, got {fixed}")
        self.codec, self.frames = codec, latent_frames * codec.temporal_scale
        self.height, self.width, self.fps, self.split = height, width, fps, split
        self.start_at_zero, self.places, self.max_start = start_at_zero, places, max_start
        self.snap_places = snap_places
        self.render_device = render_device
        self._pool = None
        if workers > 0:  # rendering (~5 ms a clip) would otherwise starve a GPU
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self._fixed = self._draw(fixed, np.random.default_rng(fixed_seed)) if fixed else None

    @property
    def fixed_pool(self) -> Clips | None:
        """The ``fixed`` clips every draw comes from (None when clips are drawn anew)."""
        return self._fixed

    def sample(self, n: int, rng: np.random.Generator) -> Clips:
        """Scenes and start frames are drawn here from ``rng`` (so a run resumes exactly with or
        without workers); the rendering is spread over the worker processes, if any."""
        if self._fixed is not None:
            pick = rng.integers(0, len(self._fixed.prompts), n)
            return Clips(self._fixed.latents[pick], [self._fixed.prompts[i] for i in pick], self._fixed.masks[pick])
        return self._draw(n, rng)

    def _draw(self, n: int, rng: np.random.Generator) -> Clips:
        jobs = []
        for _ in range(n):
            scene = sample_scene(rng, height=self.height, width=self.width, fps=self.fps, split=self.split)
            start = 0 if rng.random() < self.start_at_zero else int(rng.integers(0, self.max_start))
            if self.places and start == 0 and rng.random() < self.places:  # no draw at places=0
                scene = with_places(scene, rng, snap=self.snap_places)
            jobs.append((scene, self.frames, start))
        prompts = [job[0].prompt for job in jobs]
        if self.render_device is not None:
            scenes, _, starts = zip(*jobs)
            video, mask = render_batch(scenes, self.frames, starts, self.render_device)
        else:
            if self._pool is None:
                rendered = [_render(*job) for job in jobs]
            else:
                rendered = list(self._pool.map(_render, *zip(*jobs), chunksize=max(1, n // 16)))
            video = torch.from_numpy(np.stack([v for v, _ in rendered]))
            mask = torch.from_numpy(np.stack([m for _, m in rendered]))
        return Clips(self.codec.encode(video), prompts, self.latent_mask(mask))

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel coverage ``[n, F, H, W]`` -> the codec's latent layout (every colour channel)."""
        return (self.codec.encode(mask[..., None].expand(*mask.shape, 3)) + 1) / 2


def _render(scene, frames: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    video, truth = render(scene, frames, start)
    return video, truth.mask


def world_prompts(n: int = 4096, seed: int = 0, split: str = "train", places: bool = False) -> list[str]:
    """``n`` prompts of random ``split`` scenes (the same for a seed); ``places``: each also says
    where its objects start (:func:`world.with_places`, the cells the scene drew)."""
    rng = np.random.default_rng(seed)
    scenes = (sample_scene(rng, split=split) for _ in range(n))
    return [(with_places(s, rng) if places else s).prompt for s in scenes]
