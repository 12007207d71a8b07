"""The streaming contract as one function over a whole stream (docs/design.md §2), for tests,
benchmarks and ``python -m reward_forcing``: it runs the cache of :mod:`reward_forcing.cache` chunk by
chunk, so it sits above the cache (ops -> cache -> functional)."""

from __future__ import annotations

import torch

from . import ops, reference
from ._extension import HAS_CPP, HAS_CUDA_KERNELS
from .cache import StreamingKVCache


def streaming_attention(
    q,
    k,
    v,
    *,
    frame_tokens,
    chunk_frames,
    sink_frames,
    window_frames,
    alpha=0.999,
    scale=None,
    backend="auto",
    rope=None,
):
    """docs/design.md §2's streaming attention over a whole stream (rope-free unless ``rope`` is given).

    ``q, k, v``: ``[B, N, H, D]`` with ``N`` a multiple of ``chunk_frames * frame_tokens``; the
    stream is processed chunk by chunk through a :class:`~reward_forcing.cache.StreamingKVCache`
    (sink kept in float32, float64 for float64 input). ``backend`` as for
    :func:`sink_window_attention`; ``"naive"`` runs the frame-list oracle of
    :func:`reward_forcing.reference.streaming_attention_naive`. ``rope``: optional
    ``(freqs, spatial)`` tables of :func:`reward_forcing.rope.wan_rope_tables`, applied at §2's
    relative time indices. Returns q's shape and dtype.
    """
    ops.check_sizes(frame_tokens, sink_frames, window_frames, chunk_frames, alpha)
    for name, x in (("q", q), ("k", k), ("v", v)):
        ops.check_4d(name, x)
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k and v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k and v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    step = chunk_frames * frame_tokens
    if q.shape[1] == 0 or q.shape[1] % step:
        raise ValueError(f"N={q.shape[1]} is not a positive multiple of chunk_frames*frame_tokens={step}")
    if backend == "naive":
        return reference.streaming_attention_naive(
            q,
            k,
            v,
            frame_tokens=frame_tokens,
            chunk_frames=chunk_frames,
            sink_frames=sink_frames,
            window_frames=window_frames,
            alpha=alpha,
            scale=scale,
            rope=rope,
        )
    b, _, h, d = q.shape
    cache = StreamingKVCache(
        1,
        b,
        h,
        d,
        frame_tokens=frame_tokens,
        sink_frames=sink_frames,
        window_frames=window_frames,
        chunk_frames=chunk_frames,
        alpha=alpha,
        dtype=q.dtype,
        sink_dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
        device=q.device,
        rope=rope,
        backend=backend,
    )
    layer = cache.layer(0)
    out = []
    for start in range(0, q.shape[1], step):
        sl = slice(start, start + step)
        out.append(layer.attend(q[:, sl], k[:, sl], v[:, sl], scale=scale))
        layer.append(k[:, sl], v[:, sl])
    return torch.cat(out, 1)


def self_check() -> None:
    """Runs the streaming contract on every available backend against the float64 oracle."""
    torch.manual_seed(0)
    shape = (1, 9 * 4 * 16, 2, 32)  # 9 chunks of 4 frames x 16 tokens
    q, k, v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    kw = dict(frame_tokens=16, chunk_frames=4, sink_frames=3, window_frames=5, alpha=0.9)
    want = streaming_attention(q, k, v, backend="naive", **kw)
    backends = ["reference"] + (["kernel"] if HAS_CPP else [])
    for backend in backends:
        err = (streaming_attention(q, k, v, backend=backend, **kw) - want).abs().max().item()
        status = "ok" if err < 1e-10 else "MISMATCH"
        print(f"streaming_attention backend={backend:9s} max|err| vs float64 oracle = {err:.2e}  {status}")
        if err >= 1e-10:
            raise SystemExit(1)
    print(
        f"C++ extension: {'built' if HAS_CPP else 'missing'}; CUDA kernels: "
        f"{'built' if HAS_CUDA_KERNELS else 'not built'}; torch {torch.__version__}"
    )
