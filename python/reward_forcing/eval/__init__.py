"""Evaluation of generated videos (docs/design.md §8): model-free motion/drift metrics, ground-truth scores
against world prompts, and the markdown + JSON + PNG report."""

from .evaluate import evaluate_frames, evaluate_video
from .metrics import (
    as_video,
    colour_histograms,
    drift,
    dynamic_degree,
    flicker,
    frame_copying,
    frame_stats,
    optical_flow,
)
from .report import summarise, write_report
from .world_scores import world_scores

__all__ = [
    "as_video",
    "colour_histograms",
    "drift",
    "dynamic_degree",
    "evaluate_frames",
    "evaluate_video",
    "flicker",
    "frame_copying",
    "frame_stats",
    "optical_flow",
    "summarise",
    "world_scores",
    "write_report",
]
