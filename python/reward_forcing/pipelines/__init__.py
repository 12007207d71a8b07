"""Inference pipelines."""
from .streaming import StreamingPipeline, to_uint8_frames

__all__ = ["StreamingPipeline", "to_uint8_frames"]
