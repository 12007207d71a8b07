"""Where a world teacher stands, measured the way docs/design.md §10 says: x0 error split into object
pixels and background pixels (the renderer's exact masks) per noise level, and CFG samples scored
with the world's ground truth. Used in the teacher's training log (``probe_every``), by
``bench/world_probe.py`` (the gate) and by ``bench/world_ablation.py``.

Whole-frame errors cannot tell designs apart here: objects are a minority of a frame's pixels and
every model learns the background first.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..eval.world_scores import world_scores
from ..scheduler import FewStepFlowSchedule
from ..world import COLOURS, DIRECTIONS, SHAPES, SIZES, ObjectSpec, PromptSpec, combo_split, describe
from . import dmd
from .world_data import Clips

SIGMAS = (0.3, 0.6, 0.8, 0.95)
# The gate (docs/design.md §10): what a teacher must reach before distillation, and a student within
# STUDENT_MARGIN of its teacher on every score.
GATE = {"found": 0.90, "colour_right": 0.90, "shape_right": 0.80, "background_right": 0.95,
        "direction_right": 0.75, "keeps_moving": 0.90}
STUDENT_MARGIN = 0.10
SCORES = tuple(GATE)


@torch.no_grad()
def x0_errors(model, cond: torch.Tensor, clips: Clips, sigmas=SIGMAS, seed: int = 5) -> dict:
    """Mean squared x0 error on object pixels and on background pixels at each noise level
    (``{"0.8": {"object": e, "background": e}, ...}``), the same noise for every model."""
    gen = torch.Generator().manual_seed(seed)
    x0, obj = clips.latents.float(), clips.masks.float()
    total = FewStepFlowSchedule().num_train_timesteps
    out = {}
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=gen)
        s = torch.full((len(x0),), float(sigma))
        x_t = dmd.add_noise(x0, noise, s)
        err = (dmd.predict_x0(x_t, model(x_t, s * total, cond).float(), s) - x0).pow(2)
        out[str(sigma)] = {"object": float((err * obj).sum() / obj.sum().clamp(min=1e-9)),
                           "background": float((err * (1 - obj)).sum() / (1 - obj).sum().clamp(min=1e-9))}
    return out


def gate_prompts(n: int = 16, seed: int = 0) -> list[str]:
    """``n`` (even, >= 16) fixed prompts: the first half of held-out colour x shape x direction
    combinations (``combo_split`` "test"), the second half of training ones; every colour, shape,
    direction and background appears, every fourth prompt has a second object, sizes cycle."""
    if n < 16 or n % 2:
        raise ValueError(f"n must be an even number >= 16, got {n}")
    colours, directions, sizes = list(COLOURS), list(DIRECTIONS), list(SIZES)
    backgrounds = ("black", "white", "gray")
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        split = "test" if i < n // 2 else "train"

        def obj(j: int, avoid: str | None = None) -> ObjectSpec:
            for k in range(len(colours) * len(SHAPES) * len(directions)):
                colour = colours[(j + k // 24) % len(colours)]
                shape = SHAPES[(j + k // 8) % len(SHAPES)]
                direction = directions[(3 * j + k) % len(directions)]
                if colour != avoid and combo_split(colour, shape, direction) == split:
                    return ObjectSpec(shape, colour, sizes[j % len(sizes)], direction)
            raise AssertionError("unreachable: every colour x shape pair has both splits")

        objects = [obj(i)]
        if i % 4 == 3:
            objects.append(obj(i + 5, avoid=objects[0].colour))
        prompts.append(describe(PromptSpec(tuple(objects), backgrounds[i % 3]), rng))
    return prompts


@torch.no_grad()
def sample_videos(model, text_encoder, codec, prompts, seeds, *, latent_frames: int = 8,
                  steps: int = 8, guidance: float = 3.0, shift: float = 3.0,
                  negative: str = "static, blurry, low quality") -> np.ndarray:
    """CFG samples ``uint8 [len(prompts) * len(seeds), F, H, W, 3]`` (prompt-major), ``steps``
    Euler steps of the flow ODE warped by ``shift``; one batch."""
    from .trainer import teacher_trajectory

    pairs = [(p, s) for p in prompts for s in seeds]
    height = width = 64 // codec.spatial_scale
    noise = torch.cat([torch.randn(1, codec.channels, latent_frames, height, width,
                                   generator=torch.Generator().manual_seed(int(s))) for _, s in pairs])
    cond = text_encoder([p for p, _ in pairs]).to(model.device)
    uncond = text_encoder([negative]).to(model.device).expand_as(cond)
    x = teacher_trajectory(model, cond, uncond, noise.to(model.device), FewStepFlowSchedule(shift=shift),
                           guidance, steps)[:, -1]
    video = ((codec.decode(x.cpu()).permute(0, 2, 3, 4, 1) + 1) * 127.5).round().clamp(0, 255)
    return video.to(torch.uint8).numpy()


def score_videos(videos: np.ndarray, prompts: list[str], fps: float = 16.0) -> list[dict]:
    """world_scores of each video against its prompt (``videos`` prompt-major, as sampled)."""
    per = len(videos) // len(prompts)
    return [{k: float(v) for k, v in world_scores(video, prompts[i // per], fps=fps).items() if k in SCORES}
            for i, video in enumerate(videos)]


def summarize(rows: list[dict]) -> dict:
    """Mean and 95 % interval (normal approximation over samples, clipped to [0, 1]) of every score,
    and whether the mean passes :data:`GATE`."""
    out = {}
    for key in SCORES:
        v = np.array([r[key] for r in rows], np.float64)
        half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 1.0
        out[key] = {"mean": float(v.mean()), "ci95": [float(max(0.0, v.mean() - half)),
                                                      float(min(1.0, v.mean() + half))],
                    "gate": GATE[key], "passes": bool(v.mean() >= GATE[key])}
    out["passes_gate"] = all(out[k]["passes"] for k in SCORES)
    return out
