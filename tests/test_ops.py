"""The streaming ops (C++ twin and pure-PyTorch reference) against docs/design.md §2 in float64."""

import pytest
import torch

import reward_forcing
from reward_forcing import functional, ops, reference
from reward_forcing.rope import wan_rope_tables

BACKENDS = ["reference", "sdpa"] + (["kernel"] if reward_forcing.HAS_CPP else [])


def _qkv(b, n, h, d, dtype=torch.float64):
    return [torch.randn(b, n, h, d, dtype=dtype) for _ in range(3)]


def _attend(q, keys, values, scale):
    w = torch.einsum("blhd,bmhd->bhlm", q, keys).mul(scale).softmax(-1)
    return torch.einsum("bhlm,bmhd->blhd", w, values)


@pytest.mark.parametrize("backend", ["naive"] + BACKENDS)
def test_design_worked_example(backend):
    """docs/design.md §2: T=1, C=2, S=1, W=2, alpha=1/2, frames f0..f7, contexts written out by hand."""
    q, k, v = _qkv(1, 8, 1, 4)
    f = lambda x, i: x[:, i : i + 1]  # noqa: E731
    sink1 = lambda x: (f(x, 0) + f(x, 1)) / 2  # noqa: E731
    sink2 = lambda x: f(x, 0) / 8 + f(x, 1) / 8 + f(x, 2) / 4 + f(x, 3) / 2  # noqa: E731
    contexts = [
        lambda x: torch.cat([f(x, 0), f(x, 1)], 1),
        lambda x: torch.cat([f(x, i) for i in range(4)], 1),
        lambda x: torch.cat([sink1(x), f(x, 2), f(x, 3), f(x, 4), f(x, 5)], 1),
        lambda x: torch.cat([sink2(x), f(x, 4), f(x, 5), f(x, 6), f(x, 7)], 1),
    ]
    want = torch.cat([_attend(q[:, 2 * i : 2 * i + 2], ctx(k), ctx(v), 0.5) for i, ctx in enumerate(contexts)], 1)
    got = functional.streaming_attention(
        q, k, v, frame_tokens=1, chunk_frames=2, sink_frames=1, window_frames=2, alpha=0.5, backend=backend
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_holds_the_worked_example_sink(backend):
    k = torch.randn(1, 6, 1, 4, dtype=torch.float64)
    cache = reward_forcing.StreamingKVCache(
        1,
        1,
        1,
        4,
        frame_tokens=1,
        sink_frames=1,
        window_frames=2,
        chunk_frames=2,
        alpha=0.5,
        dtype=torch.float64,
        sink_dtype=torch.float64,
        backend=backend,
    )
    for i in range(3):
        cache.layer(0).append(k[:, 2 * i : 2 * i + 2], k[:, 2 * i : 2 * i + 2])
    want = k[:, 0] / 8 + k[:, 1] / 8 + k[:, 2] / 4 + k[:, 3] / 2
    torch.testing.assert_close(cache.sink_k[0, :, 0], want, rtol=0, atol=1e-14)
    assert int(cache.state[0]) == 6 and cache.frames_appended == [6]


# (T, C, S, W, alpha, B, H, D, chunks): C != S, S = 0, W = 0, alpha = 1, batch > 1, D 64/128, many evictions
CONFIGS = [
    (4, 3, 3, 3, 0.9, 1, 2, 16, 6),
    (3, 2, 3, 4, 0.7, 2, 3, 64, 9),
    (5, 3, 1, 2, 0.5, 1, 1, 8, 12),
    (4, 1, 2, 3, 0.8, 1, 2, 32, 14),
    (2, 4, 3, 5, 0.6, 1, 2, 8, 8),
    (4, 2, 0, 3, 0.9, 2, 2, 16, 8),
    (4, 2, 2, 0, 0.75, 1, 2, 16, 8),
    (4, 3, 3, 3, 1.0, 1, 2, 128, 5),
    (3, 3, 3, 3, 0.0, 1, 1, 8, 5),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t,c,s,w,alpha,b,h,d,chunks", CONFIGS)
def test_streaming_matches_float64_contract(backend, t, c, s, w, alpha, b, h, d, chunks):
    q, k, v = _qkv(b, chunks * c * t, h, d)
    kw = dict(frame_tokens=t, chunk_frames=c, sink_frames=s, window_frames=w, alpha=alpha)
    want = functional.streaming_attention(q, k, v, backend="naive", **kw)
    got = functional.streaming_attention(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t,c,s,w,alpha,b,h,d,chunks", CONFIGS[:6])
def test_rope_storage_matches_rotation_at_read(backend, t, c, s, w, alpha, b, h, d, chunks):
    """Keys rotated once at write + sink re-rotated per chunk == RoPE at §2's relative indices."""
    q, k, v = _qkv(b, chunks * c * t, h, d)
    rope = wan_rope_tables(d, 1, t) if d >= 6 else None
    kw = dict(frame_tokens=t, chunk_frames=c, sink_frames=s, window_frames=w, alpha=alpha, rope=rope)
    want = functional.streaming_attention(q, k, v, backend="naive", **kw)
    got = functional.streaming_attention(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("d", [64, 128])
def test_low_precision_matches_float64(dtype, atol, d):
    """Tolerances: |err| on outputs of unit-variance inputs; the float32 sink keeps EMA error
    at the level of the cache's own rounding."""
    t, c, s, w = 8, 3, 3, 3
    q, k, v = _qkv(1, 8 * c * t, 2, d)
    rope = wan_rope_tables(d, 2, 4)
    kw = dict(frame_tokens=t, chunk_frames=c, sink_frames=s, window_frames=w, alpha=0.9, rope=rope)
    want = functional.streaming_attention(q, k, v, backend="naive", **kw)
    low = [x.to(dtype) for x in (q, k, v)]
    for backend in ("kernel", "reference"):
        got = functional.streaming_attention(*low, backend=backend, **kw)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)


def _filled_cache(d=8, t=3, s=2, w=3, c=2, frames=9, dtype=torch.float64, rope=True):
    cache = reward_forcing.StreamingKVCache(
        1,
        2,
        2,
        d,
        frame_tokens=t,
        sink_frames=s,
        window_frames=w,
        chunk_frames=c,
        alpha=0.8,
        dtype=dtype,
        sink_dtype=torch.float64 if dtype == torch.float64 else torch.float32,
        rope=wan_rope_tables(d, 1, t) if rope else None,
        backend="kernel",
    )
    for _ in range(0, frames, c):
        x = torch.randn(2, c * t, 2, d, dtype=dtype)
        cache.layer(0).append(x, x.flip(1))
    return cache


def _op_args(cache, q, k, v):
    lc = cache.layer(0)
    return (
        q,
        k,
        v,
        lc.k,
        lc.v,
        lc.state,
        cache.frame_tokens,
        cache.sink_frames,
        cache.window_frames,
        0.3,
        cache.rope_freqs,
        cache.rope_spatial,
    )


@pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
def test_attention_gradcheck_float64():
    cache = _filled_cache(frames=10)
    q, k, v = (torch.randn(2, 6, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    args = _op_args(cache, q, k, v)
    assert torch.autograd.gradcheck(
        lambda q, k, v: torch.ops.reward_forcing.sink_window_attention(q, k, v, *args[3:]), (q, k, v)
    )


@pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
def test_backward_survives_later_appends():
    """Backward uses the context as it was at forward time, not the mutated buffer."""
    cache = _filled_cache(frames=10)
    q, k, v = (torch.randn(2, 6, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kw = dict(
        frame_tokens=3, sink_frames=2, window_frames=3, rope_freqs=cache.rope_freqs, rope_spatial=cache.rope_spatial
    )
    lc = cache.layer(0)
    want_out = reference.sink_window_attention(q, k, v, lc.k, lc.v, lc.state, scale=0.3, **kw)
    want = torch.autograd.grad(want_out.square().sum(), (q, k, v))
    out = ops.sink_window_attention(q, k, v, lc.k, lc.v, lc.state, scale=0.3, backend="kernel", **kw)
    for _ in range(3):  # overwrite the whole ring and update the sink
        x = torch.randn(2, 6, 2, 8, dtype=torch.float64)
        lc.append(x, x)
    got = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("frames", [0, 1, 4, 11])
def test_opcheck(frames):
    cache = _filled_cache(d=8, frames=frames, dtype=torch.float32)
    q, k, v = (torch.randn(2, 6, 2, 8, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.reward_forcing.sink_window_attention.default, _op_args(cache, q, k, v))
    lc = cache.layer(0)
    x = torch.randn(2, 6, 2, 8)
    torch.library.opcheck(
        torch.ops.reward_forcing.ring_append.default,
        (lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state, x, x, 3, 2, 3, 0.8, cache.rope_freqs, cache.rope_spatial),
    )


@pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("frames", [0, 1, 4, 11])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_stage_chunk_matches_reference(frames, dtype):
    """The C++ twin of stage_chunk: rotated q returned, rotated k and v in the chunk's ring slots."""
    cache = _filled_cache(frames=frames, dtype=dtype)
    lc = cache.layer(0)
    q, k, v = (torch.randn(2, 6, 2, 8, dtype=dtype) for _ in range(3))
    ref_k, ref_v = lc.k.clone(), lc.v.clone()
    args = (lc.state, 3, 2, 3, cache.rope_freqs, cache.rope_spatial)
    want = reference.stage_chunk(q, k, v, ref_k, ref_v, *args)
    got = torch.ops.reward_forcing.stage_chunk(q, k, v, lc.k, lc.v, *args)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(lc.k, ref_k, rtol=0, atol=0)
    torch.testing.assert_close(lc.v, ref_v, rtol=0, atol=0)
    # the slots it wrote are exactly the ones ring_append gives the chunk's frames
    staged = lc.k.clone()
    lc.append(k, v)
    n = cache.frames_appended[0]
    ring_rows = [slot * 3 + t for f in range(n - 2, n) if f >= 2 for slot in [2 + (f - 2) % 5] for t in range(3)]
    if ring_rows:
        torch.testing.assert_close(lc.k[:, ring_rows], staged[:, ring_rows], rtol=0, atol=0)
    torch.library.opcheck(torch.ops.reward_forcing.stage_chunk.default, (q, k, v, lc.k, lc.v, *args))


# ----------------------------------------------------------------------------- bad input
def _kw(**over):
    kw = dict(frame_tokens=2, chunk_frames=2, sink_frames=1, window_frames=2, alpha=0.5)
    kw.update(over)
    return kw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make,kw,exc,match",
    [
        (lambda: _qkv(1, 8, 1, 4)[:2] + [torch.randn(8, 1, 4)], {}, ValueError, "v must be 4-D"),
        (lambda: _qkv(1, 8, 1, 4)[:2] + [torch.randn(1, 8, 2, 4, dtype=torch.float64)], {}, ValueError, "one shape"),
        (lambda: _qkv(1, 6, 1, 4), {}, ValueError, "multiple of chunk_frames"),
        (lambda: _qkv(1, 0, 1, 4), {}, ValueError, "multiple of chunk_frames"),
        (lambda: _qkv(1, 8, 1, 4)[:2] + [torch.randn(1, 8, 1, 4)], {}, TypeError, "dtypes differ"),
        (
            lambda: _qkv(1, 8, 1, 4)[:2] + [torch.randn(1, 8, 1, 4, dtype=torch.float64, device="meta")],
            {},
            ValueError,
            "one device",
        ),
        (lambda: [torch.ones(1, 8, 1, 4, dtype=torch.int64)] * 3, {}, TypeError, "float16"),
        (lambda: _qkv(1, 8, 1, 4), {"sink_frames": -1}, ValueError, "sink_frames"),
        (lambda: _qkv(1, 8, 1, 4), {"window_frames": -2}, ValueError, "window_frames"),
        (lambda: _qkv(1, 8, 1, 4), {"frame_tokens": 0}, ValueError, "frame_tokens"),
        (lambda: _qkv(1, 8, 1, 4), {"chunk_frames": 0}, ValueError, "chunk_frames"),
        (lambda: _qkv(1, 8, 1, 4), {"alpha": 1.5}, ValueError, "alpha"),
        (lambda: _qkv(1, 8, 1, 4), {"alpha": -0.1}, ValueError, "alpha"),
        (lambda: _qkv(1, 8, 1, 4), {"chunk_frames": 2.0}, TypeError, "chunk_frames must be an int"),
    ],
)
def test_bad_input_names_the_problem(backend, make, kw, exc, match):
    q, k, v = make()
    with pytest.raises(exc, match=match):
        functional.streaming_attention(q, k, v, backend=backend, **_kw(**kw))


def test_unknown_backend():
    q, k, v = _qkv(1, 8, 1, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        functional.streaming_attention(q, k, v, backend="cudnn", **_kw())


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_level_bad_input(backend):
    cache = _filled_cache(rope=True)
    lc = cache.layer(0)
    q = torch.randn(2, 6, 2, 8, dtype=torch.float64)
    kw = dict(frame_tokens=3, sink_frames=2, window_frames=3, backend=backend)
    qkv = [torch.randn(2, 9, 2, 8, dtype=torch.float64)] * 3
    with pytest.raises(ValueError, match="ring holds"):  # a chunk larger than the free ring slots
        ops.sink_window_attention(*qkv, lc.k, lc.v, lc.state, **kw)
    with pytest.raises(ValueError, match="rope tables must be"):
        ops.sink_window_attention(
            q, q, q, lc.k, lc.v, lc.state, rope_freqs=cache.rope_freqs[:2], rope_spatial=cache.rope_spatial, **kw
        )
    with pytest.raises(ValueError, match="given together"):
        ops.sink_window_attention(q, q, q, lc.k, lc.v, lc.state, rope_freqs=cache.rope_freqs, **kw)
    with pytest.raises(TypeError, match="cache dtype"):
        ops.sink_window_attention(q.float(), q.float(), q.float(), lc.k, lc.v, lc.state, **kw)
    with pytest.raises(TypeError, match="state must be an int64"):
        ops.sink_window_attention(q, q, q, lc.k, lc.v, lc.state.int(), **kw)
    with pytest.raises(ValueError, match="sink_k/sink_v must be"):
        ops.ring_append(lc.k, lc.v, lc.sink_k[:, :3], lc.sink_v, lc.state, q, q, alpha=0.5, **kw)
    with pytest.raises(ValueError, match="alpha"):
        ops.ring_append(lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state, q, q, alpha=2.0, **kw)


@pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
def test_cpp_checks_raise_python_errors():
    """The C++ launchers check on their own (ValueError/TypeError), for direct torch.ops callers."""
    cache = _filled_cache()
    lc = cache.layer(0)
    q = torch.randn(2, 6, 2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="frame_tokens"):
        torch.ops.reward_forcing.sink_window_attention(q, q, q, lc.k, lc.v, lc.state, 4, 2, 3, 1.0, None, None)
    with pytest.raises(TypeError, match="dtypes differ"):
        torch.ops.reward_forcing.sink_window_attention(
            q.float(), q.float(), q.float(), lc.k, lc.v, lc.state, 3, 2, 3, 1.0, None, None
        )
    with pytest.raises(ValueError, match="alpha"):
        torch.ops.reward_forcing.ring_append(lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state, q, q, 3, 2, 3, 1.5, None, None)
