"""StreamingKVCache: fixed memory, device counters, reset, sink precision, half-life."""

import math

import pytest
import torch

import reward_forcing
from reward_forcing import StreamingKVCache, alpha_from_half_life, half_life_from_alpha

BACKENDS = ["reference"] + (["kernel"] if reward_forcing.HAS_CPP else [])


def _stream(cache, chunks, t, c, h, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = []
    for _ in range(chunks):
        q, k, v = (torch.randn(cache.k.shape[1], c * t, h, d, generator=g).to(dtype) for _ in range(3))
        for i in range(cache.num_layers):
            outs.append(cache.layer(i).attend(q, k, v))
            cache.layer(i).append(k, v)
    return outs


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_is_fixed_and_counters_live_on_device(backend):
    cache = StreamingKVCache(2, 1, 2, 8, frame_tokens=4, chunk_frames=3, dtype=torch.float32, backend=backend)
    ptrs = [x.data_ptr() for x in (cache.k, cache.v, cache.sink_k, cache.sink_v, cache.state)]
    nbytes = cache.nbytes
    _stream(cache, 10, 4, 3, 2, 8, torch.float32)
    assert cache.state.dtype == torch.int64 and cache.state.device == cache.k.device
    assert cache.state.flatten().tolist() == [30, 30] and cache.frames_appended == [30, 30]
    _stream(cache, 190, 4, 3, 2, 8, torch.float32)
    assert cache.nbytes == nbytes
    assert [x.data_ptr() for x in (cache.k, cache.v, cache.sink_k, cache.sink_v, cache.state)] == ptrs
    # (S + W + C) frames of K and V, and S frames of sink K and V in float32, per layer
    assert nbytes == 2 * 2 * (9 * 4 * 2 * 8 * 4 + 3 * 4 * 2 * 8 * 4) + 2 * 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_restarts_the_stream(backend):
    cache = StreamingKVCache(
        1,
        1,
        2,
        8,
        frame_tokens=4,
        chunk_frames=2,
        sink_frames=2,
        window_frames=2,
        alpha=0.7,
        dtype=torch.float64,
        sink_dtype=torch.float64,
        backend=backend,
    )
    first = _stream(cache, 6, 4, 2, 2, 8, torch.float64)
    cache.reset()
    assert int(cache.state.sum()) == 0 and cache.frames_appended == [0]
    again = _stream(cache, 6, 4, 2, 2, 8, torch.float64)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_sink_follows_exact_ema_while_bf16_sink_does_not(backend):
    """docs/design.md §2 "Sink precision": 3000 EMA updates at alpha=0.999 on a bf16 cache."""
    t, h, d, updates, alpha = 4, 1, 16, 3000, 0.999
    frames = torch.randn(updates + 1, 1, t, h, d).to(torch.bfloat16)
    exact = frames[0].double()
    for x in frames[1:]:
        exact = alpha * exact + (1 - alpha) * x.double()
    err = {}
    for sink_dtype in (torch.float32, torch.bfloat16):
        cache = StreamingKVCache(
            1,
            1,
            h,
            d,
            frame_tokens=t,
            sink_frames=1,
            window_frames=0,
            chunk_frames=1,
            alpha=alpha,
            dtype=torch.bfloat16,
            sink_dtype=sink_dtype,
            backend=backend,
        )
        for x in frames:  # W = 0: every frame after the first is evicted into the sink at once
            cache.layer(0).append(x, x)
        got = cache.sink_k[0].double()
        err[sink_dtype] = ((got - exact).norm() / (exact - frames[0].double()).norm()).item()
    # relative to how far the exact EMA moved from its start
    assert err[torch.float32] < 1e-3, err
    assert err[torch.bfloat16] > 0.3, err


def test_half_life():
    assert alpha_from_half_life(10) ** 10 == pytest.approx(0.5)
    assert half_life_from_alpha(0.999) == pytest.approx(math.log(2) / -math.log(0.999))
    assert half_life_from_alpha(1.0) == math.inf
    cache = StreamingKVCache(1, 1, 1, 8, frame_tokens=2, half_life=80.0, dtype=torch.float32)
    assert cache.half_life == pytest.approx(80.0) and cache.alpha == pytest.approx(0.5 ** (1 / 80))
    with pytest.raises(ValueError, match="half_life"):
        alpha_from_half_life(0)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(frame_tokens=0), ValueError, "frame_tokens"),
        (dict(frame_tokens=2, sink_frames=-1), ValueError, "sink_frames"),
        (dict(frame_tokens=2, alpha=1.2), ValueError, "alpha"),
        (dict(frame_tokens=2, backend="triton"), ValueError, "backend"),
        (dict(frame_tokens=2, dtype=torch.int32), TypeError, "floating point"),
    ],
)
def test_bad_cache_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        StreamingKVCache(1, 1, 1, 8, **kw)


def test_bad_layer_counts():
    with pytest.raises(ValueError, match="num_heads"):
        StreamingKVCache(1, 1, 0, 8, frame_tokens=2)
