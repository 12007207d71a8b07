"""StreamingKVCache: per-layer EMA-Sink + ring-window K/V storage of fixed shape (docs/design.md §2-§3).

Memory is allocated once — ``(S + W + C)`` frames of K/V per layer plus the ``S``-frame sink — and
never grows with the stream. Frame counters live in a device tensor (``state``), so the ops run
without host synchronisation and CUDA graphs can replay them; a host mirror of the same counter
(:attr:`StreamingKVCache.frames_appended`) only picks shapes for the SDPA path. The cache owns both:
other modules read them and move them only through its methods.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class CacheConfig:
    """The cache's geometry and numerics, validated once; the one object that travels from the
    pipeline through the model to the cache. Frames are latent frames.

    ``alpha=1`` is the frozen sink, ``sink_frames=0`` the plain sliding window. ``dtype`` is the
    K/V storage (``None``: the model's dtype; a bare cache uses bfloat16). ``sink_dtype`` holds the
    running average: a bf16 sink at alpha = 0.999 rounds most updates away (docs/design.md §2 "Sink
    precision"); ``torch.bfloat16`` reproduces the published behaviour. ``backend`` as for
    :func:`reward_forcing.ops.sink_window_attention`."""

    sink_frames: int = 3
    window_frames: int = 3
    chunk_frames: int = 3
    alpha: float = 0.999
    dtype: torch.dtype | None = None
    sink_dtype: torch.dtype = torch.float32
    backend: str = "auto"

    def __post_init__(self):
        ops.check_sizes(1, self.sink_frames, self.window_frames, self.chunk_frames, self.alpha)
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {self.backend!r}")
        for name in ("dtype", "sink_dtype"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
                raise TypeError(f"{name} must be a floating point torch dtype, got {value}")

    @classmethod
    def of(cls, config: CacheConfig | None = None, *, half_life: float | None = None, **fields) -> CacheConfig:
        """``config`` (default: the published S = W = C = 3, alpha 0.999) with the given fields
        replaced; ``None`` values leave a field as it is; ``half_life`` (sink-slot updates) sets
        ``alpha``."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if half_life is not None:
            fields["alpha"] = alpha_from_half_life(half_life)
        return dataclasses.replace(config or cls(), **fields)

    @property
    def half_life(self) -> float:
        return half_life_from_alpha(self.alpha)


class LayerCache:
    """One layer's view of a :class:`StreamingKVCache`: what a model's attention calls."""

    def __init__(self, cache: StreamingKVCache, index: int):
        self.cache, self.index = cache, index
        self.k, self.v = cache.k[index], cache.v[index]
        self.sink_k, self.sink_v = cache.sink_k[index], cache.sink_v[index]
        self.state = cache.state[index]

    def _kw(self):
        c = self.cache
        return dict(
            frame_tokens=c.frame_tokens,
            sink_frames=c.sink_frames,
            window_frames=c.window_frames,
            rope_freqs=c.rope_freqs,
            rope_spatial=c.rope_spatial,
        )

    def attend(self, q, k, v, scale=None, backend=None, *, append: bool = False):
        """Attention of a chunk (un-rotated ``q, k, v [B, c*T, H, D]``) over sink + window + itself,
        with the cache as it stands; ``append=True`` (the clean t = 0 pass) then appends the
        chunk's K/V (detached: the cache is never part of a graph)."""
        out = ops.sink_window_attention(
            q,
            k,
            v,
            self.k,
            self.v,
            self.state,
            scale=scale,
            backend=backend or self.cache.backend,
            frames_appended=self.cache._frames[self.index],
            **self._kw(),
        )
        if append:
            self.append(k.detach(), v.detach(), backend=backend)
        return out

    def append(self, k, v, backend=None):
        """Appends a chunk's clean K/V (after its t = 0 pass): eviction + EMA-Sink update."""
        ops.ring_append(
            self.k,
            self.v,
            self.sink_k,
            self.sink_v,
            self.state,
            k,
            v,
            alpha=self.cache.alpha,
            backend=backend or self.cache.backend,
            frames_appended=self.cache._frames[self.index],
            **self._kw(),
        )
        self.cache.advance(k.shape[1] // self.cache.frame_tokens, layer=self.index)


class StreamingKVCache:
    """Fixed-size K/V storage for ``num_layers`` layers, shaped by a :class:`CacheConfig`
    (``config``; the loose keywords ``sink_frames=...``, ``alpha=...``, ``half_life=...`` are
    applied on top of it, see :meth:`CacheConfig.of`). ``rope`` is the pair of tables of
    :func:`reward_forcing.rope.wan_rope_tables` (``None``: no rotation)."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        *,
        frame_tokens: int,
        config: CacheConfig | None = None,
        device=None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        **geometry,
    ):
        for name, value in (
            ("num_layers", num_layers),
            ("batch_size", batch_size),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        config = CacheConfig.of(config, **geometry)
        if config.dtype is None:
            config = dataclasses.replace(config, dtype=torch.bfloat16)
        ops.check_sizes(frame_tokens, config.sink_frames, config.window_frames, config.chunk_frames)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.config, self.num_layers, self.frame_tokens = config, num_layers, frame_tokens
        s, w, c = config.sink_frames, config.window_frames, config.chunk_frames
        shape = (num_layers, batch_size, (s + w + c) * frame_tokens, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=config.dtype, device=device)
        self.v = torch.zeros(shape, dtype=config.dtype, device=device)
        sink_shape = (num_layers, batch_size, s * frame_tokens, num_heads, head_dim)
        self.sink_k = torch.zeros(sink_shape, dtype=config.sink_dtype, device=device)
        self.sink_v = torch.zeros(sink_shape, dtype=config.sink_dtype, device=device)
        self.state = torch.zeros(num_layers, 1, dtype=torch.int64, device=device)
        self.rope_freqs = self.rope_spatial = None
        if rope is not None:
            self.rope_freqs, self.rope_spatial = (x.to(device=device, dtype=torch.float64) for x in rope)
        self._frames = [0] * num_layers
        self._layers = [LayerCache(self, i) for i in range(num_layers)]

    # ------------------------------------------------------------------ geometry (read-only)
    sink_frames = property(lambda self: self.config.sink_frames)
    window_frames = property(lambda self: self.config.window_frames)
    chunk_frames = property(lambda self: self.config.chunk_frames)
    alpha = property(lambda self: self.config.alpha)
    half_life = property(lambda self: self.config.half_life)
    dtype = property(lambda self: self.config.dtype)
    sink_dtype = property(lambda self: self.config.sink_dtype)
    backend = property(lambda self: self.config.backend)

    @property
    def device(self) -> torch.device:
        return self.k.device

    def layer(self, index: int) -> LayerCache:
        return self._layers[index]

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self._tensors().values())

    # ------------------------------------------------------------------ counters
    @property
    def frames_appended(self) -> list[int]:
        """The host mirror of each layer's frame counter (a copy)."""
        return list(self._frames)

    @property
    def frames(self) -> int:
        """Frames every layer has appended (layers append one after another inside a forward)."""
        return min(self._frames)

    @property
    def steady(self) -> bool:
        """Whether every chunk from now on sees the whole fixed buffer (window full)."""
        return self.frames >= self.sink_frames + self.window_frames

    def advance(self, frames: int, layer: int | None = None) -> None:
        """Moves the host mirror on by ``frames`` for one layer, or all (a replayed CUDA graph
        appended on the device, where ``state`` already moved)."""
        for i in range(self.num_layers) if layer is None else (layer,):
            self._frames[i] += frames

    def counters(self) -> tuple[int, ...]:
        """A snapshot of the host mirror, for :meth:`restore_counters` (a graph capture runs the
        Python code of an append, but no kernel)."""
        return tuple(self._frames)

    def restore_counters(self, snapshot: tuple[int, ...]) -> None:
        if len(snapshot) != self.num_layers:
            raise ValueError(f"a snapshot of {len(snapshot)} layers for a cache of {self.num_layers}")
        self._frames = list(snapshot)

    # ------------------------------------------------------------------ whole-cache state
    def reset(self, keep_sink: bool = False) -> None:
        """Empties the cache in place (same storage, so captured CUDA graphs stay valid). With
        ``keep_sink`` (KV re-cache after evictions) the sink's EMA is put back as the first
        ``sink_frames`` frames of the new stream, in full precision."""
        sink = (self.sink_k.clone(), self.sink_v.clone()) if keep_sink and self.sink_frames else None
        for x in self._tensors().values():
            x.zero_()
        self._frames = [0] * self.num_layers
        if sink is None:
            return
        per_append = self.chunk_frames * self.frame_tokens
        for i in range(self.num_layers):
            for k, v in zip(sink[0][i].split(per_append, 1), sink[1][i].split(per_append, 1)):
                self.layer(i).append(k.to(self.dtype), v.to(self.dtype))
        self.sink_k.copy_(sink[0])  # back to full precision: append stored the cache dtype
        self.sink_v.copy_(sink[1])

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"k": self.k, "v": self.v, "sink_k": self.sink_k, "sink_v": self.sink_v, "state": self.state}

    def state_dict(self) -> dict:
        """Copies of the cache tensors and the host counters."""
        return {name: x.clone() for name, x in self._tensors().items()} | {"frames_appended": list(self._frames)}

    def check_state_dict(self, state: dict) -> None:
        """Raises ValueError unless ``state`` is a :meth:`state_dict` of a cache like this one
        with consistent counters (a tampered counter must not reach the ops' pointer math)."""
        for name, dst in self._tensors().items():
            src = state[name]
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(
                    f"cache.{name}: saved {tuple(src.shape)} {src.dtype}, expected {tuple(dst.shape)} {dst.dtype}"
                )
        appended, counters = state["frames_appended"], state["state"].reshape(-1).tolist()
        if not isinstance(appended, (list, tuple)) or list(appended) != counters:
            raise ValueError(
                f"cache.frames_appended {appended!r} does not match cache.state {counters}: a corrupted stream state"
            )
        for n in counters:
            ops.check_counter(n, self.chunk_frames, "cache.state")

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` in place (same storage), after :meth:`check_state_dict`."""
        self.check_state_dict(state)
        for name, dst in self._tensors().items():
            dst.copy_(state[name])
        self._frames = list(state["frames_appended"])
