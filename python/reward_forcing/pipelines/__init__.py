"""Inference pipelines."""

from .accelerate import ACCELERATE_MODES, CompiledForwardChunk, CUDAGraphForwardChunk, make_forward_chunk
from .streaming import StreamingPipeline, UnknownWordsWarning, to_uint8_frames

__all__ = [
    "ACCELERATE_MODES",
    "CompiledForwardChunk",
    "CUDAGraphForwardChunk",
    "StreamingPipeline",
    "UnknownWordsWarning",
    "make_forward_chunk",
    "to_uint8_frames",
]
