"""Ground-truth scores of a video against a world prompt (docs/design.md §8): is each prompted object there,
in its colour, moving in its direction, and still moving at the end?

Segmentation is by colour: the background is estimated from the border pixels, foreground is what
differs from it, and a prompted object's pixels are foreground pixels nearest (among the world's
object colours) to its colour. Objects in a world scene have distinct colours, so this separates them.
An object is its colour's largest 8-connected blob, and counts only at a plausible size (MIN_AREA
to MAX_AREA of the prompted area): scattered pixels of noise, which contain every colour, or a
frame flooded with one colour are not an object.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    LEAD_SECONDS,
    SHAPES,
    PromptSpec,
    parse_prompt,
    place_at,
    radius_px,
    shape_area,
    shape_coverage,
    speed_px,
)
from .metrics import as_video

FOREGROUND_DISTANCE = 48.0  # RGB distance from the background that makes a pixel foreground
COLOUR_DISTANCE = 80.0  # max RGB distance of a pixel to the object colour it is assigned to
MIN_AREA = 0.3  # fraction of the object's expected area that must be seen
MAX_AREA = 4.0  # ... and that it may not exceed
MIN_SPEED = 0.25  # fraction of the prompted speed that counts as moving
MAX_ANGLE = 22.5  # degrees: the nearest of the 8 compass directions must be the prompted one
MIN_SHAPE_IOU = 0.7  # IoU of a blob with its prompted shape fitted to the blob's centroid and area


def estimate_background(video: np.ndarray) -> np.ndarray:
    """The median border colour of the frames (all of them, or a sample of a streamed video)."""
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3).astype(np.float32), axis=0)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask [H, W] (all False when empty)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def frame_objects(frame: np.ndarray, background: np.ndarray, colours: list[str]):
    """One frame's measurements: each prompted colour's largest blob's area [K] and centroid
    [K, 2], the largest foreground blob outside them (its area), and each blob's shape [K]
    (:func:`fitted_shape`)."""
    palette = np.array(list(COLOURS.values()), np.float32)
    wanted = [list(COLOURS).index(c) for c in colours]
    x = frame.astype(np.float32)
    fg = np.linalg.norm(x - background, axis=-1) > FOREGROUND_DISTANCE
    dist = np.linalg.norm(x[..., None, :] - palette, axis=-1)  # [H, W, palette]
    label = np.where(fg & (dist.min(-1) < COLOUR_DISTANCE), dist.argmin(-1), -1)
    masks = np.stack([_largest_blob(label == c) for c in wanted])  # [K, H, W]
    rest = fg & ~masks.any(axis=0)
    return (
        masks.sum(axis=(-2, -1)).astype(np.float64),
        _centroids(masks),
        float(_largest_blob(rest).sum()),
        np.array([fitted_shape(m) for m in masks]),
    )


def _centroids(masks: np.ndarray) -> np.ndarray:
    """[..., 2] (x, y) pixel-centre centroids; NaN where a mask is empty."""
    h, w = masks.shape[-2:]
    area = masks.sum(axis=(-2, -1)).astype(np.float64)
    xs = (masks.sum(axis=-2) * (np.arange(w) + 0.5)).sum(-1)
    ys = (masks.sum(axis=-1) * (np.arange(h) + 0.5)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([xs / area, ys / area], -1)


def shape_iou(blob: np.ndarray, shape: str) -> float:
    """IoU of a blob [H, W] (bool) with ``shape`` of the blob's area placed at its centroid."""
    area = float(blob.sum())
    if area == 0:
        return 0.0
    h, w = blob.shape
    ys, xs = np.nonzero(blob)
    radius = math.sqrt(area / shape_area(shape, 1.0))
    fit = shape_coverage(shape, radius, (xs.mean() + 0.5, ys.mean() + 0.5), h, w) >= 0.5
    return float((fit & blob).sum() / (fit | blob).sum())


def fitted_shape(blob: np.ndarray) -> int:
    """The index in SHAPES of the shape that fits the blob best, if its IoU is >= MIN_SHAPE_IOU;
    else -1. A circle and a square of equal area overlap with IoU 0.83, so the threshold alone does
    not tell them apart: the prompted shape must also fit best."""
    if not blob.any():
        return -1
    ious = [shape_iou(blob, s) for s in SHAPES]
    best = int(np.argmax(ious))
    return best if ious[best] >= MIN_SHAPE_IOU else -1


def world_scores(video, prompt: str | PromptSpec, *, fps: float = 16.0, segment: float = 0.25) -> dict:
    """Scores in [0, 1], averaged over the prompted objects (per object in "objects"):
    - found: fraction of frames with a foreground blob of a plausible size (MIN_AREA to MAX_AREA
      of the object's expected area) in its colour or any colour but the other prompted objects';
    - colour_right: fraction of frames where its colour's blob has a plausible size;
    - shape_right: fraction of frames where that blob also has the prompted shape
      (:func:`fitted_shape`);
    - direction_right: over the first LEAD_SECONDS (before any bounce, by construction of the
      world), the least-squares velocity of its colour's centroid is at least MIN_SPEED of the
      prompted speed and within MAX_ANGLE of the prompted direction;
    - keeps_moving: fraction of the consecutive pairs in the last `segment` of the video in which
      that centroid moves at least MIN_SPEED of the prompted speed (freezing or vanishing scores 0);
    - place_right (only for prompts that state where objects start, averaged over those objects):
      its colour's centroid in the first frame it is seen (within LEAD_SECONDS) lies in the
      prompted cell of the 3x3 grid (``world.PLACES``);
    - background_right: the estimated background is nearest to the prompted one;
    - adherence: mean of found, colour_right and direction_right.
    """
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    x = as_video(video)
    background = estimate_background(x)
    rows = [frame_objects(frame, background, [o.colour for o in spec.objects]) for frame in x]
    area, centre, rest_blob, shape = (np.array(r) for r in zip(*rows))
    return world_summary(
        spec, background, area, centre, rest_blob, shape, (x.shape[1], x.shape[2]), fps=fps, segment=segment
    )


def world_summary(
    spec: PromptSpec,
    background: np.ndarray,
    area: np.ndarray,
    centre: np.ndarray,
    rest_blob: np.ndarray,
    shape: np.ndarray,
    size: tuple[int, int],
    *,
    fps: float = 16.0,
    segment: float = 0.25,
) -> dict:
    """:func:`world_scores` from the per-frame measurements of :func:`frame_objects` (area
    [F, K], centre [F, K, 2], rest_blob [F], shape [F, K]) of an ``(h, w)`` video."""
    f, (h, w) = len(area), size
    names = list(BACKGROUNDS)
    bg_dist = [np.linalg.norm(background - np.array(BACKGROUNDS[n], np.float32)) for n in names]
    lead = min(f, max(3, int(round(LEAD_SECONDS * fps)) + 1))
    late = np.arange(max(0, f - max(2, int(round(f * segment)))), f)
    objects, place_hits = [], []
    for k, obj in enumerate(spec.objects):
        expected = shape_area(obj.shape, radius_px(obj.size, h, w))
        speed = speed_px(obj.speed, h, w, fps)
        plausible = lambda a: (a >= MIN_AREA * expected) & (a <= MAX_AREA * expected)  # noqa: E731
        seen = plausible(area[:, k])
        found = seen | plausible(rest_blob)

        t = np.arange(lead)[seen[:lead]]
        direction_right = False
        if len(t) >= 3:
            v = np.array([np.polyfit(t, centre[t, k, axis], 1)[0] for axis in (0, 1)])
            want = np.array(DIRECTIONS[obj.direction])
            cos = float(v @ want / max(np.linalg.norm(v), 1e-9))
            direction_right = bool(np.linalg.norm(v) >= MIN_SPEED * speed and cos >= math.cos(math.radians(MAX_ANGLE)))

        step = np.linalg.norm(np.diff(centre[late, k], axis=0), axis=-1)
        moving = seen[late[1:]] & seen[late[:-1]] & (np.nan_to_num(step) >= MIN_SPEED * speed)
        shape_right = seen & (shape[:, k] == SHAPES.index(obj.shape))
        stated = {}
        if obj.place is not None:
            first = np.flatnonzero(seen[:lead])
            place_hits.append(bool(len(first)) and place_at(*(centre[first[0], k] / (w, h))) == obj.place)
            stated["place_right"] = place_hits[-1]
        objects.append(
            {
                "colour": obj.colour,
                "shape": obj.shape,
                "found": float(found.mean()),
                "colour_right": float(seen.mean()),
                "shape_right": float(shape_right.mean()),
                "direction_right": bool(direction_right),
                "keeps_moving": float(moving.mean()),
                "centroid": centre[:, k],
                **stated,
            }
        )
    scores = {
        key: float(np.mean([o[key] for o in objects]))
        for key in ("found", "colour_right", "shape_right", "direction_right", "keeps_moving")
    }
    if place_hits:
        scores["place_right"] = float(np.mean(place_hits))
    scores["background_right"] = float(names[int(np.argmin(bg_dist))] == spec.background)
    scores["adherence"] = (scores["found"] + scores["colour_right"] + scores["direction_right"]) / 3
    return {**scores, "objects": objects}
