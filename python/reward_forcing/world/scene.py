"""A procedural video world: 1-3 flat shapes moving in straight lines and bouncing off the walls of a
plain background, with plain-English prompts that state every attribute (docs/design.md §8).

Geometry is analytic (a bounce is a fold of the straight-line position into the free interval), so
any frame range renders independently and an endless stream never drifts. Shapes are rasterised
with per-pixel coverage from a signed distance, i.e. anti-aliased with sub-pixel positions.
Units: positions in pixels (x right, y down, pixel centres at i + 0.5), velocities in pixels/frame.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

# Object colours and backgrounds are disjoint and far apart in RGB (min distance 82) and every object
# colour differs from every background in luminance by >= 33 levels, so grey-level optical flow and
# colour segmentation both see every object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 100, 240),
    "yellow": (250, 220, 40),
    "orange": (250, 140, 20),
    "purple": (150, 60, 200),
    "pink": (250, 120, 190),
    "cyan": (40, 220, 230),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (64, 64, 64)}
SHAPES = ("circle", "square", "triangle")
# radius / min(H, W). Objects of 0.07-0.14 were 3-5 % of a frame's pixels, and every model trained
# on the 2-core budget learned the backgrounds and left the objects out (docs/design.md §10): at
# 0.10-0.21 an object is 6-25 % of a 64x64 frame.
SIZES: dict[str, float] = {"small": 0.10, "medium": 0.15, "large": 0.21}
MAX_OBJECTS = 2  # per scene: what the embedded model is trained on
SPEEDS: dict[str, float] = {"slow": 0.45, "medium": 0.7, "fast": 1.0}  # min(H, W) per second
_D = math.sqrt(0.5)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "up-right": (_D, -_D),
    "up": (0.0, -1.0),
    "up-left": (-_D, -_D),
    "left": (-1.0, 0.0),
    "down-left": (-_D, _D),
    "down": (0.0, 1.0),
    "down-right": (_D, _D),
}
# Where an object starts, when a prompt says so: the cell of a 3x3 grid (column, row) holding its
# area centroid at frame 0. Without a place the start is uniform over the frame, and a model sampling
# from noise must guess it (docs/design.md §10).
PLACES: dict[str, tuple[int, int]] = {
    "top-left": (0, 0),
    "top": (1, 0),
    "top-right": (2, 0),
    "left": (0, 1),
    "centre": (1, 1),
    "right": (2, 1),
    "bottom-left": (0, 2),
    "bottom": (1, 2),
    "bottom-right": (2, 2),
}
# Objects start where they travel this long before their first bounce, so the prompted direction is
# what the first LEAD_SECONDS show (world_scores measures direction there).
LEAD_SECONDS = 0.5

_COLOUR_WORDS = {
    "red": ["red"],
    "green": ["green"],
    "blue": ["blue"],
    "yellow": ["yellow"],
    "orange": ["orange"],
    "purple": ["purple", "violet"],
    "pink": ["pink"],
    "cyan": ["cyan", "turquoise"],
}
_BACKGROUND_WORDS = {"black": ["black"], "white": ["white"], "gray": ["gray", "grey"]}
_SHAPE_WORDS = {"circle": ["circle", "ball", "disc"], "square": ["square", "box", "block"], "triangle": ["triangle"]}
_SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": [], "large": ["large", "big"]}
_SPEED_ADJECTIVES = {"slow": ["slow"], "medium": [], "fast": ["fast", "quick"]}
_SPEED_ADVERBS = {"slow": ["slowly", "gently"], "medium": ["steadily"], "fast": ["quickly", "rapidly"]}
_VERBS = ["moving", "drifting", "bouncing", "sliding", "gliding", "travelling", "heading", "floating"]
_DIRECTION_WORDS = {
    "right": ["to the right", "rightward", "right", "toward the right", "east"],
    "left": ["to the left", "leftward", "left", "toward the left", "west"],
    "up": ["up", "upward", "toward the top", "north"],
    "down": ["down", "downward", "toward the bottom", "south"],
    "up-right": ["up and to the right", "diagonally up-right", "toward the top right", "northeast"],
    "up-left": ["up and to the left", "diagonally up-left", "toward the top left", "northwest"],
    "down-right": ["down and to the right", "diagonally down-right", "toward the bottom right", "southeast"],
    "down-left": ["down and to the left", "diagonally down-left", "toward the bottom left", "southwest"],
}
_PLACE_WORDS = {
    "top-left": ["in the top left", "in the upper left"],
    "top": ["at the top"],
    "top-right": ["in the top right", "in the upper right"],
    "left": ["on the left"],
    "centre": ["in the centre", "in the middle"],
    "right": ["on the right"],
    "bottom-left": ["in the bottom left", "in the lower left"],
    "bottom": ["at the bottom"],
    "bottom-right": ["in the bottom right", "in the lower right"],
}
_COUNT_WORDS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt says about one object."""

    shape: str
    colour: str
    size: str = "medium"
    direction: str = "right"
    speed: str = "medium"
    place: str | None = None  # a key of PLACES: the grid cell it starts in; None: not stated


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt says: its objects in order, and the background."""

    objects: tuple[ObjectSpec, ...]
    background: str


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]
    background: str
    starts: tuple[tuple[float, float], ...]  # centre at frame 0, as fractions of (width, height)
    prompt: str
    height: int = 64
    width: int = 64
    fps: float = 16.0

    @property
    def spec(self) -> PromptSpec:
        return PromptSpec(self.objects, self.background)


@dataclass(frozen=True)
class Truth:
    """Per-frame ground truth of a rendered range; K = number of objects, in drawing order."""

    frames: np.ndarray  # [F] int64 frame indices
    position: np.ndarray  # [F, K, 2] float32 centre (x, y), pixels
    velocity: np.ndarray  # [F, K, 2] float32 pixels/frame
    visible: np.ndarray  # [F, K] bool: at least half of the object is not covered by later ones
    colour: np.ndarray  # [K, 3] uint8 RGB
    shape: tuple[str, ...]
    radius: np.ndarray  # [K] float32 pixels
    mask: np.ndarray  # [F, H, W] float32 object coverage in [0, 1] (all objects together)


# ---------------------------------------------------------------------------------------- geometry
def radius_px(size: str, height: int, width: int) -> float:
    return SIZES[size] * min(height, width)


def speed_px(speed: str, height: int, width: int, fps: float) -> float:
    """Speed in pixels per frame."""
    return SPEEDS[speed] * min(height, width) / fps


def half_extent(shape: str, radius: float) -> tuple[float, float]:
    """Half width and half height of the shape's bounding box (what bounces off the walls)."""
    return {"circle": (radius, radius), "square": (0.9 * radius, 0.9 * radius), "triangle": (radius, 0.866 * radius)}[
        shape
    ]


def shape_area(shape: str, radius: float) -> float:
    return {"circle": math.pi, "square": 3.24, "triangle": 1.732}[shape] * radius**2


def _signed_distance(shape: str, r, dx, dy):
    """Signed distance (pixels) to the shape of radius ``r`` centred at the origin; numpy arrays, or
    torch tensors (then ``r`` may be a tensor broadcasting against ``dx``: :func:`render_batch`)."""
    xp = np if isinstance(dx, np.ndarray) else _torch()
    if shape == "circle":
        return xp.hypot(dx, dy) - r
    if shape == "square":
        return xp.maximum(abs(dx), abs(dy)) - 0.9 * r
    # equilateral triangle, apex up, side 2r, bounding box centred on the origin
    a = 0.866 * r
    norm = math.hypot(2 * a, r) if isinstance(r, float) else (4 * a * a + r * r) ** 0.5
    return xp.maximum(dy - a, (abs(dx) * 2 * a - (dy + a) * r) / norm)


def centroid_below_centre(shape: str, radius: float) -> float:
    """How far (pixels) the shape's area centroid lies below the centre of its bounding box."""
    return 0.866 * radius / 3 if shape == "triangle" else 0.0


def shape_coverage(shape: str, radius: float, centre: tuple[float, float], height: int, width: int) -> np.ndarray:
    """Per-pixel coverage [H, W] in [0, 1] of ``shape`` at ``radius`` whose *area centroid* is at
    ``centre`` (x, y pixels; a triangle's centroid lies a third of its half height below the
    centre of its bounding box, which is where :func:`render` places it)."""
    dy0 = centroid_below_centre(shape, radius)
    xs = np.arange(width, dtype=np.float32) + 0.5 - centre[0]
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - (centre[1] - dy0)
    return np.clip(0.5 - _signed_distance(shape, float(radius), xs + 0 * ys, ys + 0 * xs), 0.0, 1.0)


def _torch():
    import torch

    return torch


def _fold(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounce: fold a straight-line coordinate into [lo, hi]; also returns the velocity sign."""
    span = hi - lo
    u = np.mod(x - lo, 2 * span)
    back = u > span
    return lo + np.where(back, 2 * span - u, u), np.where(back, -1.0, 1.0)


def trajectory(scene: Scene, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities [F, K, 2] at the given frame indices."""
    h, w = scene.height, scene.width
    pos = np.empty((len(frames), len(scene.objects), 2))
    vel = np.empty_like(pos)
    t = np.asarray(frames, dtype=np.float64)
    for k, (obj, start) in enumerate(zip(scene.objects, scene.starts)):
        r = radius_px(obj.size, h, w)
        v = speed_px(obj.speed, h, w, scene.fps)
        for axis, (dim, ext) in enumerate(zip((w, h), half_extent(obj.shape, r))):
            vel_axis = v * DIRECTIONS[obj.direction][axis]
            pos[:, k, axis], sign = _fold(start[axis] * dim + vel_axis * t, ext, dim - ext)
            vel[:, k, axis] = vel_axis * sign
    return pos, vel


# --------------------------------------------------------------------------------------- rendering
def render(scene: Scene, num_frames: int, start: int = 0, block: int = 64) -> tuple[np.ndarray, Truth]:
    """Frames start .. start+num_frames-1 as uint8 [F, H, W, 3] RGB, and their ground truth."""
    h, w = scene.height, scene.width
    frames = np.arange(start, start + num_frames)
    pos, vel = trajectory(scene, frames)
    colours = np.array([COLOURS[o.colour] for o in scene.objects], dtype=np.float32).reshape(-1, 3)
    radii = np.array([radius_px(o.size, h, w) for o in scene.objects], dtype=np.float32)
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    video = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    mask = np.empty((num_frames, h, w), dtype=np.float32)
    visible = np.zeros((num_frames, len(scene.objects)), dtype=bool)
    for b in range(0, num_frames, block):
        p = pos[b : b + block].astype(np.float32)
        img = np.broadcast_to(np.array(BACKGROUNDS[scene.background], np.float32), (len(p), h, w, 3)).copy()
        covers = []
        for k, obj in enumerate(scene.objects):
            dx = xs - p[:, k, 0, None, None]
            dy = ys - p[:, k, 1, None, None]
            cover = np.clip(0.5 - _signed_distance(obj.shape, float(radii[k]), dx, dy), 0.0, 1.0)
            img += (colours[k] - img) * cover[..., None]
            covers.append(cover)
        uncovered = np.ones((len(p), h, w), np.float32)
        for k in reversed(range(len(covers))):
            own = covers[k].sum(axis=(1, 2))
            visible[b : b + block, k] = (covers[k] * uncovered).sum(axis=(1, 2)) >= 0.5 * own
            uncovered *= 1.0 - covers[k]
        video[b : b + block] = np.rint(img).astype(np.uint8)
        mask[b : b + block] = 1.0 - uncovered
    truth = Truth(
        frames=frames,
        position=pos.astype(np.float32),
        velocity=vel.astype(np.float32),
        visible=visible,
        colour=colours.astype(np.uint8),
        shape=tuple(o.shape for o in scene.objects),
        radius=radii,
        mask=mask,
    )
    return video, truth


def render_batch(scenes, num_frames: int, starts, device="cpu"):
    """The frames of many scenes at once with torch on ``device`` (a GPU renders a training batch
    in a few ms): uint8 ``[B, num_frames, H, W, 3]``, scene i from frame ``starts[i]``, and the
    object coverage ``[B, num_frames, H, W]`` (float32, :attr:`Truth.mask`); the same pixels as
    :func:`render` (same float32 arithmetic), without the rest of the ground truth."""
    import torch

    h, w = scenes[0].height, scenes[0].width
    if any((sc.height, sc.width) != (h, w) for sc in scenes):
        raise ValueError("render_batch needs scenes of one size")
    k_max = max(len(sc.objects) for sc in scenes)
    b = len(scenes)
    pos = np.zeros((b, num_frames, k_max, 2), np.float32)
    radius = np.ones((b, k_max), np.float32)
    colour = np.zeros((b, k_max, 3), np.float32)
    shape = np.full((b, k_max), -1)
    for i, (sc, start) in enumerate(zip(scenes, starts)):
        n = len(sc.objects)
        pos[i, :, :n] = trajectory(sc, np.arange(start, start + num_frames))[0]
        radius[i, :n] = [radius_px(o.size, h, w) for o in sc.objects]
        colour[i, :n] = [COLOURS[o.colour] for o in sc.objects]
        shape[i, :n] = [SHAPES.index(o.shape) for o in sc.objects]
    pos_t, radius_t, colour_t, shape_t = (torch.from_numpy(x).to(device) for x in (pos, radius, colour, shape))
    img = torch.tensor([BACKGROUNDS[sc.background] for sc in scenes], dtype=torch.float32, device=device)
    img = img[:, None, None, None].expand(b, num_frames, h, w, 3).contiguous()
    xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
    ys = torch.arange(h, dtype=torch.float32, device=device)[:, None] + 0.5
    uncovered = torch.ones(img.shape[:-1], dtype=torch.float32, device=device)
    for k in range(k_max):
        dx = xs - pos_t[:, :, k, 0, None, None]
        dy = ys - pos_t[:, :, k, 1, None, None]
        r = radius_t[:, k, None, None, None]
        sdf = torch.full_like(dx, float("inf"))  # absent objects cover nothing
        for index, name in enumerate(SHAPES):
            sdf = torch.where((shape_t[:, k] == index)[:, None, None, None], _signed_distance(name, r, dx, dy), sdf)
        cover = (0.5 - sdf).clamp(0.0, 1.0)
        img += (colour_t[:, k, None, None, None] - img) * cover[..., None]
        uncovered *= 1.0 - cover
    return img.round().to(torch.uint8), 1.0 - uncovered


def stream_scene(scene: Scene, chunk_frames: int = 16, start: int = 0) -> Iterator[tuple[np.ndarray, Truth]]:
    """Endless source: consecutive chunks (video [chunk_frames, H, W, 3], truth) of one scene."""
    while True:
        yield render(scene, chunk_frames, start)
        start += chunk_frames


def place_at(x: float, y: float) -> str:
    """The PLACES cell holding the point at fractions ``(x, y)`` of the frame's width and height."""
    cell = (min(max(int(x * 3), 0), 2), min(max(int(y * 3), 0), 2))
    return next(name for name, at in PLACES.items() if at == cell)


def start_place(direction: str) -> str:
    """The cell an object moving in ``direction`` starts in when it has the most room ahead: the
    side opposite its heading, on each axis ("right" -> "left", "up" -> "bottom")."""

    def behind(d: float) -> float:  # a fraction of the frame on the side it moves away from
        return 0.5 if abs(d) < 0.1 else (0.0 if d > 0 else 1.0)

    dx, dy = DIRECTIONS[direction]
    return place_at(behind(dx), behind(dy))


def with_places(scene: Scene, rng: np.random.Generator | int | None = None, *, snap: bool = False) -> Scene:
    """The same scene (same starts, same frames) with the cell of each object's area centroid at
    frame 0 (what world_scores measures) stated in a prompt worded anew from ``rng``; ``snap``: each
    object moved to its cell's one start (:func:`placed_start`), so the prompt fixes the frames."""
    h, w = scene.height, scene.width
    objects = tuple(
        replace(o, place=place_at(x, y + centroid_below_centre(o.shape, radius_px(o.size, h, w)) / h))
        for o, (x, y) in zip(scene.objects, scene.starts)
    )
    starts = tuple(placed_start(o, h, w, scene.fps) for o in objects) if snap else scene.starts
    prompt = describe(PromptSpec(objects, scene.background), rng)
    return replace(scene, objects=objects, starts=starts, prompt=prompt)


# ------------------------------------------------------------------------------- held-out split
def combo_split(colour: str, shape: str, direction: str) -> str:
    """'test' for the held-out colour x shape x direction combinations, else 'train'.

    Exactly one direction of each colour x shape pair is held out (24 of 192 combinations), so every
    colour, shape and direction is still seen in training, only not together.
    """
    c, s, d = list(COLOURS).index(colour), SHAPES.index(shape), list(DIRECTIONS).index(direction)
    return "test" if (7 * c + 3 * s + 5 * d) % 8 == 0 else "train"


def scene_split(spec: PromptSpec | Scene) -> str:
    """'test' if every object's combination is held out, 'train' if none is, else 'mixed'."""
    splits = {combo_split(o.colour, o.shape, o.direction) for o in spec.objects}
    return splits.pop() if len(splits) == 1 else "mixed"


# -------------------------------------------------------------------------------------- sampling
def sample_scene(
    rng: np.random.Generator | int | None = None,
    *,
    height: int = 64,
    width: int = 64,
    fps: float = 16.0,
    n_objects: int | None = None,
    split: str | None = None,
) -> Scene:
    """A random scene with a randomly worded prompt. split='train' / 'test' draws only train / only
    held-out colour x shape x direction combinations (see combo_split); None draws any.
    Objects in a scene have distinct colours, so colour segmentation tells them apart."""
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    rng = np.random.default_rng(rng)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in [1, {MAX_OBJECTS}], got {n}")
    objects: list[ObjectSpec] = []
    while len(objects) < n:
        colour = str(rng.choice([c for c in COLOURS if c not in {o.colour for o in objects}]))
        shape, direction = str(rng.choice(SHAPES)), str(rng.choice(list(DIRECTIONS)))
        if split is not None and combo_split(colour, shape, direction) != split:
            continue
        objects.append(
            ObjectSpec(shape, colour, str(rng.choice(list(SIZES))), direction, str(rng.choice(list(SPEEDS))))
        )
    background = str(rng.choice(list(BACKGROUNDS)))
    starts = _sample_starts(rng, objects, height, width, fps)
    spec = PromptSpec(tuple(objects), background)
    return Scene(spec.objects, background, starts, describe(spec, rng), height, width, fps)


def _start_intervals(obj: ObjectSpec, height: int, width: int, fps: float) -> list[tuple[float, float]]:
    """Per axis (x, y), the pixel interval of bounding-box centres from which ``obj`` travels
    LEAD_SECONDS before its first bounce."""
    r = radius_px(obj.size, height, width)
    travel = speed_px(obj.speed, height, width, fps) * LEAD_SECONDS * fps
    intervals = []
    for axis, (dim, ext) in enumerate(zip((width, height), half_extent(obj.shape, r))):
        d = travel * DIRECTIONS[obj.direction][axis]
        lo, hi = ext + max(0.0, -d), dim - ext - max(0.0, d)
        if lo > hi:
            raise ValueError(f"{height}x{width} is too small for a {obj} to move {LEAD_SECONDS} s before bouncing")
        intervals.append((lo, hi))
    return intervals


def placed_start(obj: ObjectSpec, height: int = 64, width: int = 64, fps: float = 16.0) -> tuple[float, float]:
    """The one start (bounding-box centre, fractions of width and height) of an object with a place:
    its area centroid as near its cell's centre as leaves LEAD_SECONDS before the first bounce (a
    cell it cannot start in with that lead: the nearest start that can). A prompt's place then pins
    the start exactly, so what a model draws from noise is the prompt's, not the mean over a cell."""
    if obj.place is None:
        raise ValueError(f"placed_start needs an object with a place, got {obj}")
    dy0 = centroid_below_centre(obj.shape, radius_px(obj.size, height, width))
    start = []
    for axis, (dim, (lo, hi)) in enumerate(zip((width, height), _start_intervals(obj, height, width, fps))):
        offset = dy0 if axis == 1 else 0.0  # bounding-box centre = area centroid - offset
        cell = PLACES[obj.place][axis]
        cell_lo, cell_hi = cell * dim / 3 - offset, (cell + 1) * dim / 3 - offset
        target = (cell + 0.5) * dim / 3 - offset
        if max(lo, cell_lo) <= min(hi, cell_hi):
            lo, hi = max(lo, cell_lo), min(hi, cell_hi)
        start.append(min(max(target, lo), hi) / dim)
    return start[0], start[1]


def _sample_starts(rng, objects, height, width, fps, tries: int = 20):
    """Start centres that leave LEAD_SECONDS before the first bounce; objects apart when possible."""
    starts: list[tuple[float, float]] = []
    for obj in objects:
        r, intervals = radius_px(obj.size, height, width), _start_intervals(obj, height, width, fps)
        for _ in range(tries):
            centre = [float(rng.uniform(lo, hi)) for lo, hi in intervals]
            apart = all(math.hypot(centre[0] - x * width, centre[1] - y * height) >= 2.2 * r for x, y in starts)
            if apart:
                break
        starts.append((centre[0] / width, centre[1] / height))
    return tuple(starts)


# ------------------------------------------------------------------------------------- prompts
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_BACKDROP_WORDS = ["background", "backdrop"]
_AND = "and"  # joins the last two objects of a prompt: "{o1}, {o2} and {o3}"
_ONE_OBJECT_TEMPLATES = [
    "{objs} on a {bg} {backdrop}",
    "{objs} against a {bg} {backdrop}",
    "{objs}, {bg} {backdrop}",
    "on a {bg} {backdrop}, {objs}",
]
_OBJECTS_TEMPLATES = [
    "{count} shapes: {objs} on a {bg} {backdrop}",
    "{objs}, on a {bg} {backdrop}",
    "{count} objects on a {bg} {backdrop}: {objs}",
    "{objs} against a {bg} {backdrop}",
]


def _describe_object(obj: ObjectSpec, rng: np.random.Generator) -> str:
    def choice(words: list[str]) -> str:
        return str(rng.choice(words))

    adjective_speed = bool(_SPEED_ADJECTIVES[obj.speed]) and rng.random() < 0.5
    adjectives = [choice(_SPEED_ADJECTIVES[obj.speed])] if adjective_speed else []
    adjectives += [choice(_SIZE_WORDS[obj.size])] if _SIZE_WORDS[obj.size] else []
    adjectives.append(choice(_COLOUR_WORDS[obj.colour]))
    words = [_article(adjectives[0]), *adjectives, choice(_SHAPE_WORDS[obj.shape])]
    words += [choice(_PLACE_WORDS[obj.place])] if obj.place is not None else []
    words.append(choice(_VERBS))
    direction = choice(_DIRECTION_WORDS[obj.direction])
    adverb = (
        None if adjective_speed or (obj.speed == "medium" and rng.random() < 0.7) else choice(_SPEED_ADVERBS[obj.speed])
    )
    if adverb and rng.random() < 0.5:
        words += [adverb, direction]
    else:
        words += [direction] + ([adverb] if adverb else [])
    return " ".join(words)


def describe(spec: PromptSpec, rng: np.random.Generator | int | None = None) -> str:
    """A plain-English prompt stating every attribute of spec, in randomly chosen wording."""
    rng = np.random.default_rng(rng)
    parts = [_describe_object(o, rng) for o in spec.objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {_AND} " + parts[-1]
    bg = str(rng.choice(_BACKGROUND_WORDS[spec.background]))
    backdrop = str(rng.choice(_BACKDROP_WORDS))
    templates = _ONE_OBJECT_TEMPLATES if len(parts) == 1 else _OBJECTS_TEMPLATES
    text = str(rng.choice(templates)).format(
        objs=listed, bg=bg, backdrop=backdrop, count=_COUNT_WORDS.get(len(parts), str(len(parts)))
    )
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def _alternation(table: dict[str, list[str]]) -> str:
    words = sorted({w for ws in table.values() for w in ws}, key=len, reverse=True)
    return "|".join(re.escape(w) for w in words)


def _lookup(table: dict[str, list[str]], word: str | None) -> str:
    """The attribute a word names; None (the word was left out) names 'medium'."""
    return "medium" if word is None else next(k for k, ws in table.items() if word in ws)


_OBJECT_RE = re.compile(
    rf"\ban? (?:(?P<speed_adj>{_alternation(_SPEED_ADJECTIVES)}) )?"
    rf"(?:(?P<size>{_alternation(_SIZE_WORDS)}) )?(?P<colour>{_alternation(_COLOUR_WORDS)}) "
    rf"(?P<shape>{_alternation(_SHAPE_WORDS)}) (?:(?P<place>{_alternation(_PLACE_WORDS)}) )?(?:{'|'.join(_VERBS)}) "
    rf"(?:(?P<adverb1>{_alternation(_SPEED_ADVERBS)}) )?(?P<direction>{_alternation(_DIRECTION_WORDS)})"
    rf"(?: (?P<adverb2>{_alternation(_SPEED_ADVERBS)}))?\b"
)
_BACKGROUND_RE = re.compile(rf"\b(?P<bg>{_alternation(_BACKGROUND_WORDS)}) (?:{'|'.join(_BACKDROP_WORDS)})\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower())


# Every word describe() can write: the embedded model has seen no other.
VOCABULARY = frozenset(
    word
    for phrase in (
        *(
            w
            for table in (
                _COLOUR_WORDS,
                _BACKGROUND_WORDS,
                _SHAPE_WORDS,
                _SIZE_WORDS,
                _SPEED_ADJECTIVES,
                _SPEED_ADVERBS,
                _DIRECTION_WORDS,
                _PLACE_WORDS,
            )
            for ws in table.values()
            for w in ws
        ),
        *_VERBS,
        *_COUNT_WORDS.values(),
        *_BACKDROP_WORDS,
        _AND,
        "a",  # the articles _article writes
        "an",
        *(re.sub(r"\{\w+\}", " ", t) for t in _ONE_OBJECT_TEMPLATES + _OBJECTS_TEMPLATES),
    )
    for word in _words(phrase)
)


def unknown_words(text: str, vocabulary: frozenset[str] = VOCABULARY) -> list[str]:
    """The words of ``text`` outside ``vocabulary``, each once, in order of appearance."""
    return list(dict.fromkeys(w for w in _words(text) if w not in vocabulary))


def parse_prompt(text: str) -> PromptSpec:
    """Recover the attributes from a prompt written by describe(); ValueError if it is not one."""
    text = text.lower()
    bg = _BACKGROUND_RE.search(text)
    matches = list(_OBJECT_RE.finditer(text))
    if bg is None or not matches:
        raise ValueError(f"not a world prompt: {text!r}")
    if len(matches) > MAX_OBJECTS:
        raise ValueError(
            f"a world scene holds at most {MAX_OBJECTS} objects, the prompt names {len(matches)}: {text!r}"
        )
    objects = []
    for m in matches:
        speed_word = m["speed_adj"] or m["adverb1"] or m["adverb2"]
        speed_table = _SPEED_ADJECTIVES if m["speed_adj"] else _SPEED_ADVERBS
        objects.append(
            ObjectSpec(
                shape=_lookup(_SHAPE_WORDS, m["shape"]),
                colour=_lookup(_COLOUR_WORDS, m["colour"]),
                size=_lookup(_SIZE_WORDS, m["size"]),
                direction=_lookup(_DIRECTION_WORDS, m["direction"]),
                speed=_lookup(speed_table, speed_word),
                place=None if m["place"] is None else _lookup(_PLACE_WORDS, m["place"]),
            )
        )
    return PromptSpec(tuple(objects), _lookup(_BACKGROUND_WORDS, bg["bg"]))
