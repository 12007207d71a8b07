"""Where a world teacher stands, measured the way docs/design.md §10 says: x0 error split into object
pixels and background pixels (the renderer's exact masks) per noise level, and CFG samples scored
with the world's ground truth. Used in the teacher's training log (``probe_every``), by
``bench/world_probe.py`` (the gate) and by ``bench/world_ablation.py``.

Whole-frame errors cannot tell designs apart here: objects are a minority of a frame's pixels and
every model learns the background first.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..eval.world_scores import world_scores
from ..scheduler import FewStepFlowSchedule, teacher_trajectory
from ..world import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    PromptSpec,
    combo_split,
    describe,
    fill_places,
)
from . import dmd
from .world_data import Clips

SIGMAS = (0.3, 0.6, 0.8, 0.95)
# The gate (docs/design.md §10): what a teacher must reach before distillation, and a student within
# STUDENT_MARGIN of its teacher on every score.
GATE = {
    "found": 0.90,
    "colour_right": 0.90,
    "shape_right": 0.80,
    "background_right": 0.95,
    "direction_right": 0.75,
    "keeps_moving": 0.90,
}
STUDENT_MARGIN = 0.10
SCORES = tuple(GATE)
PLACE = "place_right"  # scored (not gated) where prompts say where objects start


@torch.no_grad()
def x0_predictions(
    model, cond: torch.Tensor, latents: torch.Tensor, sigmas=SIGMAS, seed: int = 5, chunk_frames: int | None = None
) -> dict:
    """``{sigma: x0 prediction}`` from ``latents`` noised to each level (every frame), the same noise
    for every model; ``chunk_frames`` runs a block-causal teacher with its mask."""
    x0 = latents.float()
    gen = torch.Generator(x0.device).manual_seed(seed)
    total = FewStepFlowSchedule().num_train_timesteps
    out = {}
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=gen, device=x0.device)
        s = torch.full((len(x0),), float(sigma), device=x0.device)
        x_t = dmd.add_noise(x0, noise, s)
        out[sigma] = dmd.predict_x0(x_t, model(x_t, s * total, cond, chunk_frames=chunk_frames).float(), s)
    return out


def x0_errors(
    model, cond: torch.Tensor, clips: Clips, sigmas=SIGMAS, seed: int = 5, chunk_frames: int | None = None
) -> dict:
    """Mean squared x0 error on object pixels and on background pixels at each noise level
    (``{"0.8": {"object": e, "background": e}, ...}``), the same noise for every model."""
    x0, obj = clips.latents.float(), clips.masks.float()
    out = {}
    for sigma, x0_hat in x0_predictions(model, cond, x0, sigmas, seed, chunk_frames).items():
        err = (x0_hat - x0).pow(2)
        out[str(sigma)] = {
            "object": float((err * obj).sum() / obj.sum().clamp(min=1e-9)),
            "background": float((err * (1 - obj)).sum() / (1 - obj).sum().clamp(min=1e-9)),
        }
    return out


def _x0_under_prompts(model, codec, obj: ObjectSpec, start, cond, sigma, seed, size, latent_frames, chunk_frames):
    """The x0 predictions ``[len(cond), C, F, H, W]`` from one clip of ``obj`` on black (its centre
    at ``start``, fractions of the frame) noised to ``sigma``, one per prompt of ``cond``, and the
    clip's ground truth: what the binding probes compare."""
    from ..world import Scene, render

    scene = Scene((obj,), "black", (start,), "", *size)
    video, truth = render(scene, codec.temporal_scale * latent_frames)
    x0 = codec.encode(torch.from_numpy(video)[None])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    s = torch.full((len(cond),), float(sigma))
    x_t = dmd.add_noise(x0.expand(len(cond), -1, -1, -1, -1), noise, s).to(model.device)
    v = model(x_t, s.to(model.device) * FewStepFlowSchedule().num_train_timesteps, cond, chunk_frames=chunk_frames)
    return dmd.predict_x0(x_t, v.float(), s.to(model.device)), truth


@torch.no_grad()
def colour_binding(
    model,
    text_encoder,
    codec,
    sigma: float = 0.95,
    seed: int = 0,
    *,
    latent_frames: int = 8,
    size: tuple[int, int] = (64, 64),
    chunk_frames: int | None = None,
) -> float:
    """Share of (clip, prompted colour) pairs in which the model's x0 prediction paints the object
    pixels nearest to the *prompted* colour, for a large circle of each of three true colours under
    prompts that differ only in the colour word (chance 1/8). At noise levels where the object is
    still visible in ``x_t`` a model may copy its colour from the input; at 0.95 the colour has to
    come from the text."""
    names, palette = list(COLOURS), np.array(list(COLOURS.values()), np.float32)
    cond = text_encoder([f"a large {c} circle moving to the right on a black background" for c in names])
    hits = 0
    for true in ("red", "blue", "yellow"):
        x0_hat, truth = _x0_under_prompts(
            model, codec, ObjectSpec("circle", true, "large", "right"), (0.3, 0.5), cond.to(model.device),
            sigma, seed, size, latent_frames, chunk_frames,
        )  # fmt: skip
        pixels = ((codec.decode(x0_hat.cpu()).permute(0, 2, 3, 4, 1) + 1) * 127.5).numpy()
        colours = pixels[:, truth.mask > 0.5].mean(1)
        hits += sum(int(np.argmin(np.linalg.norm(palette - c, axis=1))) == i for i, c in enumerate(colours))
    return hits / (3 * len(names))


@torch.no_grad()
def direction_binding(
    model,
    text_encoder,
    codec,
    sigma: float = 0.9,
    seed: int = 0,
    *,
    latent_frames: int = 2,
    size: tuple[int, int] = (64, 64),
    chunk_frames: int | None = None,
    place: str | None = None,
) -> float:
    """Share of (clip, prompted direction) pairs in which the model's x0 prediction moves the object
    in the *prompted* direction (world_scores' direction_right), for a small circle starting in the
    middle and moving in each of three true directions, under prompts that differ only in the
    direction (chance 1/8: a model that takes the motion from ``x_t`` alone hits only when the prompt
    is the truth). At 0.9 a clip shows where its object is but hardly how it moves. ``place``: the
    prompts also say where the object starts ("centre" is where it does)."""
    names = list(DIRECTIONS)
    prompts = [describe(PromptSpec((ObjectSpec("circle", "red", "small", d, place=place),), "black"), 0) for d in names]
    cond = text_encoder(prompts)
    hits = 0
    for true in ("right", "up", "down-left"):
        x0_hat, _ = _x0_under_prompts(
            model, codec, ObjectSpec("circle", "red", "small", true), (0.5, 0.5), cond.to(model.device),
            sigma, seed, size, latent_frames, chunk_frames,
        )  # fmt: skip
        hits += sum(int(r["direction_right"]) for r in score_videos(decode_videos(codec, x0_hat), prompts))
    return hits / (3 * len(names))


def gate_prompts(n: int = 16, seed: int = 0, places: bool = False) -> list[str]:
    """``n`` (even, >= 16) fixed prompts: the first half of held-out colour x shape x direction
    combinations (``combo_split`` "test"), the second half of training ones; every colour, shape,
    direction and background appears, every fourth prompt has a second object, sizes cycle.
    ``places``: each object also starts where it has room to move, in a cell of its own
    (:func:`world.fill_places`, as the default pipeline places objects a prompt leaves open)."""
    if n < 16 or n % 2:
        raise ValueError(f"n must be an even number >= 16, got {n}")
    colours, directions, sizes = list(COLOURS), list(DIRECTIONS), list(SIZES)
    backgrounds = ("black", "white", "gray")
    rng = np.random.default_rng(seed)
    prompts, used = [], set()
    for i in range(n):
        split = "test" if i < n // 2 else "train"

        def obj(j: int, avoid: str | None = None) -> ObjectSpec:
            for fresh in (True, False):  # a direction not yet used, if the split allows one
                for k in range(len(colours) * len(SHAPES) * len(directions)):
                    colour = colours[(j + k // 24) % len(colours)]
                    shape = SHAPES[(j + k // 8) % len(SHAPES)]
                    direction = directions[(3 * j + k) % len(directions)]
                    if (
                        colour != avoid
                        and combo_split(colour, shape, direction) == split
                        and not (fresh and direction in used)
                    ):
                        used.add(direction)
                        return ObjectSpec(shape, colour, sizes[j % len(sizes)], direction)
            raise AssertionError("unreachable: every colour x shape pair has both splits")

        objects = [obj(i)]
        if i % 4 == 3:
            objects.append(obj(i + 5, avoid=objects[0].colour))
        spec = PromptSpec(tuple(objects), backgrounds[i % 3])
        prompts.append(describe(fill_places(spec) if places else spec, rng))
    return prompts


@torch.no_grad()
def sample_videos(
    model,
    text_encoder,
    codec,
    prompts,
    seeds,
    *,
    latent_frames: int = 8,
    size: tuple[int, int] = (64, 64),
    steps: int = 8,
    guidance: float = 3.0,
    shift: float = 3.0,
    negative: str = "static, blurry, low quality",
    chunk_frames: int | None = None,
) -> np.ndarray:
    """CFG samples ``uint8 [len(prompts) * len(seeds), F, H, W, 3]`` (prompt-major), ``steps``
    Euler steps of the flow ODE warped by ``shift``; one batch. ``chunk_frames``: a block-causal
    teacher, sampled chunk by chunk."""
    pairs = [(p, s) for p in prompts for s in seeds]
    height, width = (n // codec.spatial_scale for n in size)
    noise = torch.cat(
        [
            torch.randn(
                1, codec.channels, latent_frames, height, width, generator=torch.Generator().manual_seed(int(s))
            )
            for _, s in pairs
        ]
    )
    cond = text_encoder([p for p, _ in pairs]).to(model.device)
    uncond = text_encoder([negative]).to(model.device).expand_as(cond)
    teacher = functools.partial(model, chunk_frames=chunk_frames)
    schedule = FewStepFlowSchedule(shift=shift)
    x = teacher_trajectory(teacher, cond, uncond, noise.to(model.device), schedule, guidance, steps, chunk_frames)[
        :, -1
    ]
    return decode_videos(codec, x)


def decode_videos(codec, latents: torch.Tensor) -> np.ndarray:
    """Latents ``[B, C, F, H, W]`` -> ``uint8 [B, F', H', W', 3]`` (numpy)."""
    video = ((codec.decode(latents.cpu()).permute(0, 2, 3, 4, 1) + 1) * 127.5).round().clamp(0, 255)
    return video.to(torch.uint8).numpy()


def score_videos(videos: np.ndarray, prompts: list[str], fps: float = 16.0) -> list[dict]:
    """world_scores of each video against its prompt (``videos`` prompt-major, as sampled)."""
    per = len(videos) // len(prompts)
    return [
        {k: float(v) for k, v in world_scores(video, prompts[i // per], fps=fps).items() if k in (*SCORES, PLACE)}
        for i, video in enumerate(videos)
    ]


def summarize(rows: list[dict]) -> dict:
    """Mean and 95 % interval (normal approximation over samples, clipped to [0, 1]) of every score,
    and whether the mean passes :data:`GATE`; also of place_right (not gated) where prompts state
    places."""
    out: dict = {}
    for key in (*SCORES, PLACE):
        v = np.array([r[key] for r in rows if key in r], np.float64)
        if not len(v):
            continue
        half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 1.0
        out[key] = {
            "mean": float(v.mean()),
            "ci95": [float(max(0.0, v.mean() - half)), float(min(1.0, v.mean() + half))],
        }
        if key in GATE:
            out[key] |= {"gate": GATE[key], "passes": bool(v.mean() >= GATE[key])}
    out["passes_gate"] = all(out[k]["passes"] for k in SCORES)
    return out


class WorldProbe:
    """The cheap probe the teacher stage logs every ``probe_every`` steps: x0 errors on 8 held
    clips (object / background, per noise level), colour and direction binding, and 8-step samples of 4 gate
    prompts (one seed) scored with the ground truth; where the data states places (``data.places``),
    the prompts and the direction binding do too. Its random numbers are its own: a probed run
    trains exactly as an unprobed one."""

    def __init__(self, data, clips: int = 8, prompts: int = 4, seed: int = 12345, chunk_frames: int | None = None):
        self.codec = data.codec
        latent_frames = data.frames // data.codec.temporal_scale
        held = type(data)(data.codec, latent_frames, data.height, data.width, data.fps, start_at_zero=1.0)
        self.clips = held.sample(clips, np.random.default_rng(seed))
        self.place = "centre" if data.places else None
        self.prompts = gate_prompts(16, places=data.places > 0)[:: 16 // prompts][:prompts]
        self.latent_frames, self.size, self.fps = latent_frames, (data.height, data.width), data.fps
        self.chunk_frames = chunk_frames

    @torch.no_grad()
    def __call__(self, model, text_encoder) -> dict:
        was_training = model.training
        model.eval()
        cond = text_encoder(self.clips.prompts).to(model.device)
        logs = {}
        for sigma, e in x0_errors(model, cond, _to(self.clips, model.device), chunk_frames=self.chunk_frames).items():
            logs[f"x0_object@{sigma}"], logs[f"x0_background@{sigma}"] = e["object"], e["background"]
        logs["colour_binding"] = colour_binding(
            model,
            text_encoder,
            self.codec,
            latent_frames=self.latent_frames,
            size=self.size,
            chunk_frames=self.chunk_frames,
        )
        logs["direction_binding"] = direction_binding(
            model, text_encoder, self.codec, size=self.size, chunk_frames=self.chunk_frames, place=self.place
        )
        videos = sample_videos(
            model,
            text_encoder,
            self.codec,
            self.prompts,
            (0,),
            latent_frames=self.latent_frames,
            size=self.size,
            chunk_frames=self.chunk_frames,
        )
        for key, value in summarize(score_videos(videos, self.prompts, self.fps)).items():
            if key in (*SCORES, PLACE):
                logs[f"probe_{key}"] = value["mean"]
        model.train(was_training)
        return logs


def _to(clips: Clips, device) -> Clips:
    return Clips(clips.latents.to(device), clips.prompts, clips.masks.to(device))
