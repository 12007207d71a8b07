"""Inference pipelines."""
from .accelerate import (ACCELERATE_MODES, CompiledForwardChunk, CUDAGraphForwardChunk,
                         compiled_forward_chunk, make_forward_chunk)
from .streaming import StreamingPipeline, to_uint8_frames

__all__ = ["ACCELERATE_MODES", "CompiledForwardChunk", "CUDAGraphForwardChunk", "StreamingPipeline",
           "compiled_forward_chunk", "make_forward_chunk", "to_uint8_frames"]
