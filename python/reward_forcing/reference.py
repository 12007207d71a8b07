"""Pure-PyTorch references.

* :func:`ring_append` and :func:`sink_window_attention` implement the two ops on the storage
  convention of docs/design.md §3 (same arguments and semantics as ``torch.ops.reward_forcing.*``).
* :func:`streaming_attention_naive` implements the contract of docs/design.md §2 directly, on a list of
  frames, with no ring buffer and no RoPE: the independent oracle the storage ops are tested against.
"""

from __future__ import annotations

import torch

from .rope import rope_cos_sin, rope_rotate


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _frame(x: torch.Tensor, slot: int, t: int) -> torch.Tensor:
    return x[:, slot * t : (slot + 1) * t]


def _rotate(x, rope, positions, acc, inverse=False):
    if rope is None:
        return x.to(acc)
    cos, sin = rope_cos_sin(rope[0], rope[1], positions, acc)
    return rope_rotate(x, cos, sin, inverse)


def _rope(rope_freqs, rope_spatial):
    return None if rope_freqs is None else (rope_freqs, rope_spatial)


def ring_append(
    k_cache,
    v_cache,
    sink_k,
    sink_v,
    state,
    k,
    v,
    frame_tokens,
    sink_frames,
    window_frames,
    alpha,
    rope_freqs=None,
    rope_spatial=None,
) -> None:
    t, s, w = frame_tokens, sink_frames, window_frames
    r = k_cache.shape[1] // t - s
    acc = _acc(k_cache.dtype)
    rope = _rope(rope_freqs, rope_spatial)
    n = int(state.item())
    for i in range(k.shape[1] // t):
        f = n + i
        if f < s:
            _frame(sink_k, f, t).copy_(_frame(k, i, t))
            _frame(sink_v, f, t).copy_(_frame(v, i, t))
            continue
        slot = s + (f - s) % r
        pos = torch.tensor([f])
        _frame(k_cache, slot, t).copy_(_rotate(_frame(k, i, t), rope, pos, acc))
        _frame(v_cache, slot, t).copy_(_frame(v, i, t))
        e = f - w
        if e < s or s == 0:
            continue
        eslot, j = s + (e - s) % r, (e - s) % s
        ke = _rotate(_frame(k_cache, eslot, t), rope, torch.tensor([e]), acc, inverse=True)
        ve = _frame(v_cache, eslot, t).to(acc)
        sk, sv = _frame(sink_k, j, t), _frame(sink_v, j, t)
        sk.copy_(alpha * sk.to(acc) + (1 - alpha) * ke)
        sv.copy_(alpha * sv.to(acc) + (1 - alpha) * ve)
    n1 = n + k.shape[1] // t
    filled = min(n1, s)
    p0 = n1 - min(max(n1 - s, 0), w)
    if filled:
        pos = torch.arange(p0 - filled, p0)
        k_cache[:, : filled * t].copy_(_rotate(sink_k[:, : filled * t], rope, pos, acc))
        v_cache[:, : filled * t].copy_(sink_v[:, : filled * t])
    state.add_(n1 - n)


def stage_chunk(
    q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames, window_frames, rope_freqs=None, rope_spatial=None
):
    t, s = frame_tokens, sink_frames
    r = k_cache.shape[1] // t - s
    acc = _acc(q.dtype)
    rope = _rope(rope_freqs, rope_spatial)
    n = int(state.item())
    pos = torch.arange(n, n + q.shape[1] // t)
    kr = _rotate(k, rope, pos, acc)
    for i, f in enumerate(pos.tolist()):
        if f >= s:
            slot = s + (f - s) % r
            _frame(k_cache, slot, t).copy_(_frame(kr, i, t))
            _frame(v_cache, slot, t).copy_(_frame(v, i, t))
    return _rotate(q, rope, pos, acc).to(q.dtype)


def gather_context(k_cache, v_cache, n, frame_tokens, sink_frames, window_frames):
    """The cached context a chunk sees when ``n`` frames were appended: ``(keys, values)``
    ``[B, ctx, H, D]`` (sink slots, then window frames oldest first), as copies."""
    t, s, w = frame_tokens, sink_frames, window_frames
    r = k_cache.shape[1] // t - s
    first = max(s, n - w)
    slots = list(range(min(n, s))) + [s + (f - s) % r for f in range(first, n)]
    dev = k_cache.device
    idx = torch.tensor(slots, dtype=torch.long, device=dev).view(-1, 1) * t
    idx = (idx + torch.arange(t, device=dev)).reshape(-1)
    return k_cache.index_select(1, idx), v_cache.index_select(1, idx)


def context_mask(state, frame_tokens, sink_frames, window_frames, ring_frames):
    """Boolean ``[(S + R) * T]``: the buffer tokens a chunk sees when ``state`` frames were
    appended, computed with device ops only (no host synchronisation, traceable)."""
    dev = state.device
    n = state.reshape(())
    sink = torch.arange(sink_frames, device=dev) < n
    f = n - window_frames + torch.arange(window_frames, device=dev)  # the window's frames
    slot = torch.remainder(f - sink_frames, ring_frames)
    ring = torch.zeros(ring_frames, dtype=torch.int64, device=dev).scatter_reduce(
        0, slot, (f >= sink_frames).long(), "amax"
    )
    return torch.cat([sink, ring.bool()]).repeat_interleave(frame_tokens)


def attention(q, k, v, scale, key_mask=None):
    """Softmax attention on ``[B, L, H, D]`` tensors, in their dtype (math, differentiable);
    ``key_mask`` (bool ``[Lk]``) drops keys."""
    s = torch.einsum("blhd,bmhd->bhlm", q, k) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v)


def sink_window_attention(
    q,
    k,
    v,
    k_cache,
    v_cache,
    state,
    frame_tokens,
    sink_frames,
    window_frames,
    scale,
    rope_freqs=None,
    rope_spatial=None,
):
    acc = _acc(q.dtype)
    n = int(state.item())
    c = q.shape[1] // frame_tokens
    rope = _rope(rope_freqs, rope_spatial)
    pos = torch.arange(n, n + c)
    qr, kr = _rotate(q, rope, pos, acc), _rotate(k, rope, pos, acc)
    kc, vc = gather_context(k_cache, v_cache, n, frame_tokens, sink_frames, window_frames)
    keys = torch.cat([kc.to(acc), kr], 1)
    values = torch.cat([vc.to(acc), v.to(acc)], 1)
    return attention(qr, keys, values, scale).to(q.dtype)


def streaming_attention_naive(
    q, k, v, *, frame_tokens, chunk_frames, sink_frames, window_frames, alpha=0.999, scale=None, rope=None
):
    """docs/design.md §2 on a list of frames, computed in float64 (returned in q's dtype). With
    ``rope=(freqs, spatial)`` keys and queries are rotated at read time at the relative time
    indices of §2 (sink 0.., window oldest first, then the chunk), as the public code does."""
    t, c = frame_tokens, chunk_frames
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q64, k64, v64 = q.double(), k.double(), v.double()
    sink: list[tuple[torch.Tensor, torch.Tensor]] = []
    window: list[tuple[torch.Tensor, torch.Tensor]] = []
    evicted = 0
    out = []
    for start in range(0, q.shape[1], c * t):
        sl = slice(start, start + c * t)
        ctx = sink + window
        keys = torch.cat([f[0] for f in ctx] + [k64[:, sl]], 1)
        values = torch.cat([f[1] for f in ctx] + [v64[:, sl]], 1)
        qc = q64[:, sl]
        if rope is not None:
            pos = torch.arange(len(ctx) + c)
            keys = _rotate(keys, rope, pos, torch.float64)
            qc = _rotate(qc, rope, pos[len(ctx) :], torch.float64)
        out.append(attention(qc, keys, values, scale))
        for i in range(c):
            fs = slice(start + i * t, start + (i + 1) * t)
            if len(sink) < sink_frames and evicted == 0 and not window:
                sink.append((k64[:, fs], v64[:, fs]))
                continue
            window.append((k64[:, fs], v64[:, fs]))
            if len(window) > window_frames:
                ke, ve = window.pop(0)
                if sink_frames:
                    j = evicted % sink_frames
                    sink[j] = (alpha * sink[j][0] + (1 - alpha) * ke, alpha * sink[j][1] + (1 - alpha) * ve)
                evicted += 1
    return torch.cat(out, 1).to(q.dtype)
