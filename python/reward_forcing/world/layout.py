"""The layout a layout model (``WanConfig.layout``) conditions its first latent frame on: each object a
prompt places (its place words, :data:`PLACES`) drawn on the tokens of its 3x3 cell as the object's
words in one-hots. From pure noise a model must otherwise learn to read *where* from the text, a
conjunction of token position and place word that no model tried left after tens of thousands of
clips (docs/design.md §10); on its own tokens the object is a local, per-token fact.

A drawn layout (``WanConfig.layout_sketch``, :func:`sketch_states`) goes further: the objects drawn
where the prompt starts them (:func:`placed_start`, the start its training clips were snapped to),
each token carrying its pixels' coverage, so the shape need not be drawn from a cell's blur."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .scene import (
    COLOURS,
    DIRECTIONS,
    PLACES,
    SHAPES,
    SIZES,
    SPEEDS,
    PromptSpec,
    centroid_below_centre,
    describe,
    parse_prompt,
    placed_start,
    radius_px,
    shape_coverage,
    start_place,
)

# The feature columns of a layout state: an object's presence, then its words.
_WORDS = (("colour", tuple(COLOURS)), ("shape", SHAPES), ("size", tuple(SIZES)), ("direction", tuple(DIRECTIONS)),
          ("speed", tuple(SPEEDS)))  # fmt: skip
LAYOUT_FEATURES = 1 + sum(len(words) for _, words in _WORDS)


def _cover(n: int, cell: int) -> np.ndarray:
    """``[n]``: the share of each of ``n`` equal token bands that lies in third ``cell`` of the axis."""
    lo, hi = np.arange(n) / n, np.arange(1, n + 1) / n
    return (np.clip(np.minimum(hi, (cell + 1) / 3) - np.maximum(lo, cell / 3), 0, None) * n).astype(np.float32)


def layout_states(spec: PromptSpec, rows: int, cols: int) -> np.ndarray:
    """``float32 [rows * cols, LAYOUT_FEATURES]`` (tokens row-major): for every object with a place,
    its presence and word one-hots times the share of each token inside its cell (objects in one
    cell add up); zeros where no object is placed."""
    out = np.zeros((rows, cols, LAYOUT_FEATURES), np.float32)
    for obj in spec.objects:
        if obj.place is None:
            continue
        col, row = PLACES[obj.place]
        out += _cover(rows, row)[:, None, None] * _cover(cols, col)[None, :, None] * _words(obj)
    return out.reshape(rows * cols, LAYOUT_FEATURES)


def _words(obj) -> np.ndarray:
    features, offset = np.zeros(LAYOUT_FEATURES, np.float32), 1
    features[0] = 1
    for field, words in _WORDS:
        features[offset + words.index(getattr(obj, field))] = 1
        offset += len(words)
    return features


def sketch_states(spec: PromptSpec, rows: int, cols: int, pixels: int) -> np.ndarray:
    """``float32 [rows * cols, LAYOUT_FEATURES + pixels**2]``: the placed objects drawn where they
    start (:func:`placed_start`) on a frame of ``rows x cols`` tokens of ``pixels x pixels``: each
    token's word one-hots times the share of it each object covers (the part later objects leave
    visible), then its pixels' coverage by any object, row-major. Only the geometry: colour and
    background stay the model's to draw from the words."""
    h, w = rows * pixels, cols * pixels
    uncovered, words = np.ones((h, w), np.float32), np.zeros((rows * cols, LAYOUT_FEATURES), np.float32)
    placed = [o for o in spec.objects if o.place is not None]
    covers = []
    for obj in placed:
        x, y = placed_start(obj, h, w)
        r = radius_px(obj.size, h, w)
        covers.append(shape_coverage(obj.shape, r, (x * w, y * h + centroid_below_centre(obj.shape, r)), h, w))
    for obj, cover in reversed(list(zip(placed, covers))):
        share = (cover * uncovered).reshape(rows, pixels, cols, pixels).mean(axis=(1, 3)).reshape(-1, 1)
        words += share * _words(obj)
        uncovered *= 1 - cover
    mask = (1 - uncovered).reshape(rows, pixels, cols, pixels).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    return np.concatenate([words, mask], 1)


def fill_places(spec: PromptSpec) -> PromptSpec:
    """``spec`` with every object that has no place started where it has room to move
    (:func:`start_place` of its direction), or, when an earlier object holds that cell, in the free
    cell nearest to it."""
    taken = {o.place for o in spec.objects if o.place is not None}
    objects = []
    for obj in spec.objects:
        if obj.place is None:
            col, row = PLACES[start_place(obj.direction)]
            free = [p for p in PLACES if p not in taken] or list(PLACES)
            place = min(free, key=lambda p: (PLACES[p][0] - col) ** 2 + (PLACES[p][1] - row) ** 2)
            taken.add(place)
            obj = dataclasses.replace(obj, place=place)
        objects.append(obj)
    return PromptSpec(tuple(objects), spec.background)


class LayoutTextEncoder(nn.Module):
    """A text encoder for a layout model: ``encoder(prompts) [B, text_len, text_dim]`` followed by
    each prompt's :func:`layout_states` on a ``rows x cols`` token frame, zero-padded to ``text_dim``
    (a prompt that is not a world prompt, such as a negative prompt, has an empty layout); with
    ``sketch_pixels`` > 0 (``WanConfig.layout_sketch``) its :func:`sketch_states` at that many pixels
    per token side instead.

    ``place_unplaced`` (streaming a model trained on placed prompts): a world prompt that leaves an
    object's start open gets one (:func:`fill_places`) and is reworded to say so
    (:func:`describe`), as the prompts it was trained on were. Training leaves it off: a clip that
    does not start at frame 0 has no layout."""

    def __init__(
        self,
        encoder: Callable[[Sequence[str]], torch.Tensor],
        rows: int,
        cols: int,
        *,
        place_unplaced: bool = False,
        sketch_pixels: int = 0,
    ):
        super().__init__()
        if rows < 1 or cols < 1:
            raise ValueError(f"a layout needs a token frame of at least 1x1, got {rows}x{cols}")
        if sketch_pixels < 0:
            raise ValueError(f"sketch_pixels must be >= 0, got {sketch_pixels}")
        self.encoder, self.rows, self.cols, self.place_unplaced = encoder, rows, cols, place_unplaced
        self.sketch_pixels = sketch_pixels

    @property
    def features(self) -> int:
        """Layout features per token: the words, then a drawn layout's pixels."""
        return LAYOUT_FEATURES + self.sketch_pixels**2

    @property
    def tokens(self) -> int:
        """Layout states after the text states."""
        return self.rows * self.cols

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        specs: list[PromptSpec | None] = []
        for i, prompt in enumerate(prompts):
            try:
                spec = parse_prompt(prompt)
            except ValueError:
                specs.append(None)
                continue
            if self.place_unplaced and any(o.place is None for o in spec.objects):
                spec = fill_places(spec)
                prompts[i] = describe(spec, 0)
            specs.append(spec)
        states = self.encoder(prompts)
        if states.shape[-1] < self.features:
            raise ValueError(f"text states of width {states.shape[-1]} cannot hold {self.features} layout features")
        layout = torch.zeros(len(prompts), self.tokens, states.shape[-1], dtype=states.dtype)
        for i, placed in enumerate(specs):
            if placed is None:
                continue
            if self.sketch_pixels:
                drawn = sketch_states(placed, self.rows, self.cols, self.sketch_pixels)
            else:
                drawn = layout_states(placed, self.rows, self.cols)
            layout[i, :, : self.features] = torch.from_numpy(drawn)
        return torch.cat([states, layout.to(states.device)], 1)
