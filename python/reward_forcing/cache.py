"""StreamingKVCache: per-layer EMA-Sink + ring-window K/V storage of fixed shape (docs/design.md §2-§3).

Memory is allocated once — ``(S + W + C)`` frames of K/V per layer plus the ``S``-frame sink — and
never grows with the stream. Frame counters live in a device tensor (``state``), so the ops run
without host synchronisation and CUDA graphs can replay them; a host mirror of the same counter
(``frames_appended``) only picks shapes for the SDPA path.
"""
from __future__ import annotations

import math

import torch

from . import ops


def alpha_from_half_life(half_life: float) -> float:
    """The EMA factor whose weight on the old sink halves after ``half_life`` updates of a sink
    slot (= chunks when chunk_frames == sink_frames): ``alpha = 2^(-1/half_life)``."""
    if not half_life > 0:
        raise ValueError(f"half_life must be positive, got {half_life}")
    return 0.5 ** (1.0 / half_life)


def half_life_from_alpha(alpha: float) -> float:
    """Updates of a sink slot after which ``alpha`` halves the old sink's weight (inf for 1)."""
    ops.check_sizes(1, 0, 0, alpha=alpha)
    return math.inf if alpha >= 1.0 else (0.0 if alpha == 0.0 else math.log(0.5) / math.log(alpha))


class LayerCache:
    """One layer's view of a :class:`StreamingKVCache`: what a model's attention calls."""

    def __init__(self, cache: "StreamingKVCache", index: int):
        self.cache, self.index = cache, index
        self.k, self.v = cache.k[index], cache.v[index]
        self.sink_k, self.sink_v = cache.sink_k[index], cache.sink_v[index]
        self.state = cache.state[index]

    def _kw(self):
        c = self.cache
        return dict(frame_tokens=c.frame_tokens, sink_frames=c.sink_frames,
                    window_frames=c.window_frames, rope_freqs=c.rope_freqs,
                    rope_spatial=c.rope_spatial)

    def attend(self, q, k, v, scale=None, backend=None):
        """Attention of a chunk (un-rotated ``q, k, v [B, c*T, H, D]``) over sink + window + itself,
        with the cache as it stands (the chunk is not appended)."""
        return ops.sink_window_attention(
            q, k, v, self.k, self.v, self.state, scale=scale,
            backend=backend or self.cache.backend,
            frames_appended=self.cache.frames_appended[self.index], **self._kw())

    def append(self, k, v, backend=None):
        """Appends a chunk's clean K/V (after its t = 0 pass): eviction + EMA-Sink update."""
        ops.ring_append(self.k, self.v, self.sink_k, self.sink_v, self.state, k, v,
                        alpha=self.cache.alpha, backend=backend or self.cache.backend,
                        frames_appended=self.cache.frames_appended[self.index], **self._kw())
        self.cache.frames_appended[self.index] += k.shape[1] // self.cache.frame_tokens


class StreamingKVCache:
    """Fixed-size K/V storage for ``num_layers`` layers.

    ``alpha`` (or ``half_life`` in sink-slot updates) sets the EMA; ``alpha=1`` is the frozen sink,
    ``sink_frames=0`` the plain sliding window. ``sink_dtype`` (default float32) holds the running
    average: a bf16 sink at alpha = 0.999 rounds most updates away (docs/design.md §2 "Sink precision");
    pass ``sink_dtype=torch.bfloat16`` to reproduce the published behaviour. ``rope`` is the pair of
    tables of :func:`reward_forcing.rope.wan_rope_tables` (``None``: no rotation).
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, *,
                 frame_tokens: int, sink_frames: int = 3, window_frames: int = 3,
                 chunk_frames: int = 3, alpha: float | None = 0.999, half_life: float | None = None,
                 dtype: torch.dtype = torch.bfloat16, sink_dtype: torch.dtype = torch.float32,
                 device=None, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                 backend: str = "auto"):
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size),
                            ("num_heads", num_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if half_life is not None:
            alpha = alpha_from_half_life(half_life)
        if alpha is None:
            raise ValueError("give alpha or half_life")
        ops.check_sizes(frame_tokens, sink_frames, window_frames, chunk_frames, alpha)
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        if not (dtype.is_floating_point and sink_dtype.is_floating_point):
            raise TypeError(f"dtype and sink_dtype must be floating point, got {dtype}, {sink_dtype}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.num_layers, self.frame_tokens = num_layers, frame_tokens
        self.sink_frames, self.window_frames, self.chunk_frames = sink_frames, window_frames, chunk_frames
        self.alpha, self.backend, self.dtype, self.sink_dtype = float(alpha), backend, dtype, sink_dtype
        slots = (sink_frames + window_frames + chunk_frames) * frame_tokens
        shape = (num_layers, batch_size, slots, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        sink_shape = (num_layers, batch_size, sink_frames * frame_tokens, num_heads, head_dim)
        self.sink_k = torch.zeros(sink_shape, dtype=sink_dtype, device=device)
        self.sink_v = torch.zeros(sink_shape, dtype=sink_dtype, device=device)
        self.state = torch.zeros(num_layers, 1, dtype=torch.int64, device=device)
        self.rope_freqs = self.rope_spatial = None
        if rope is not None:
            self.rope_freqs, self.rope_spatial = (x.to(device=device, dtype=torch.float64) for x in rope)
        self.frames_appended = [0] * num_layers
        self._layers = [LayerCache(self, i) for i in range(num_layers)]

    def layer(self, index: int) -> LayerCache:
        return self._layers[index]

    def reset(self) -> None:
        """Empties the cache in place (same storage, so captured CUDA graphs stay valid)."""
        for x in (self.k, self.v, self.sink_k, self.sink_v, self.state):
            x.zero_()
        self.frames_appended = [0] * self.num_layers

    @property
    def half_life(self) -> float:
        return half_life_from_alpha(self.alpha)

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.k, self.v, self.sink_k, self.sink_v, self.state))
