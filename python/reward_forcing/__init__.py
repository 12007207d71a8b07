"""reward_forcing: real-time streaming text-to-video with Reward Forcing (EMA-Sink streaming
attention, Re-DMD), with C++/CUDA ops. See docs/design.md §2-§3 for the cache contract."""

from ._extension import HAS_CPP, HAS_CUDA_KERNELS
from .cache import CacheConfig, StreamingKVCache, alpha_from_half_life, half_life_from_alpha
from .functional import streaming_attention
from .ops import ring_append, sink_window_attention

__version__ = "0.1.0"
__all__ = [
    "HAS_CPP",
    "HAS_CUDA_KERNELS",
    "CacheConfig",
    "StreamingKVCache",
    "alpha_from_half_life",
    "half_life_from_alpha",
    "ring_append",
    "sink_window_attention",
    "streaming_attention",
]
