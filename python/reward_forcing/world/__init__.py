"""The procedural video world: shapes, prompts, rendering with ground truth, held-out split."""
from .scene import (BACKGROUNDS, COLOURS, DIRECTIONS, LEAD_SECONDS, MAX_OBJECTS, SHAPES, SIZES, SPEEDS,
                    ObjectSpec, PromptSpec, Scene, Truth, combo_split, describe, half_extent,
                    parse_prompt, radius_px, render, render_batch, sample_scene, scene_split,
                    shape_area, shape_coverage, speed_px, stream_scene, trajectory)

__all__ = ["BACKGROUNDS", "COLOURS", "DIRECTIONS", "LEAD_SECONDS", "MAX_OBJECTS", "SHAPES", "SIZES", "SPEEDS",
           "ObjectSpec", "PromptSpec", "Scene", "Truth", "combo_split", "describe", "half_extent",
           "parse_prompt", "radius_px", "render", "render_batch", "sample_scene", "scene_split",
           "shape_area", "shape_coverage", "speed_px", "stream_scene", "trajectory"]
