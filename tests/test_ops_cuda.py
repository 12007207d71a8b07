"""CUDA kernels (ring_append, sink_window_attention) and the SDPA path on the GPU, against the C++
CPU twin and float64 references. Every test needs a CUDA GPU and reward_forcing built with CUDA.

Tolerances (|err| on outputs of unit-variance inputs, vs float64 math on the same stored inputs):
bf16 2e-2, fp16 5e-3, fp32 1e-4, fp64 1e-10. ring_append against the CPU twin: equal up to one
rounding step of the stored dtype at the inputs' magnitude (|x| <= ~5): the GPU takes sin/cos in
float32 after a float64 range reduction (abs. error ~4e-7), the CPU in float64, so a stored bf16 or
fp16 value may round the other way (one ulp, which un-rotation can move to the other channel of
its pair); any indexing or ordering error is O(1).
"""

import math

import pytest
import torch

import reward_forcing
from reward_forcing import functional, ops, reference
from reward_forcing.rope import rope_cos_sin, rope_rotate, wan_rope_tables

_WHY = "needs a CUDA GPU" if not torch.cuda.is_available() else "reward_forcing was built without its CUDA kernels"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and reward_forcing.HAS_CUDA_KERNELS), reason=_WHY),
]

DEV = "cuda"
ATTN_TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4, torch.float64: 1e-10}
# (rtol, atol) of ring_append vs the CPU twin: one rounding step of the stored dtype at |x| ~ 5.
APPEND_TOL = {
    torch.bfloat16: (1.6e-2, 4e-2),
    torch.float16: (2e-3, 5e-3),
    torch.float32: (1e-5, 2e-5),
    torch.float64: (1e-12, 1e-12),
}

# (T, C, S, W, alpha, B, H, D, chunks): C != S (both ways), S = 0, W = 0, alpha = 1 and 0,
# batch 2, several heads, D 64/128 and small, many evictions (chunks >> (S + W) / C).
CONFIGS = [
    (4, 3, 3, 3, 0.9, 1, 2, 128, 7),
    (3, 2, 3, 4, 0.7, 2, 3, 64, 9),
    (5, 3, 1, 2, 0.5, 1, 1, 8, 12),
    (4, 1, 2, 3, 0.8, 1, 2, 32, 14),
    (2, 4, 3, 5, 0.6, 1, 2, 16, 8),
    (4, 2, 0, 3, 0.9, 2, 2, 16, 8),
    (4, 2, 2, 0, 0.75, 1, 2, 64, 8),
    (4, 3, 3, 3, 1.0, 1, 2, 128, 5),
    (3, 3, 3, 3, 0.0, 1, 1, 8, 5),
]


def _cache(dtype, sink_dtype, t, c, s, w, alpha, b, h, d, rope, device, backend="kernel"):
    return reward_forcing.StreamingKVCache(
        1,
        b,
        h,
        d,
        frame_tokens=t,
        sink_frames=s,
        window_frames=w,
        chunk_frames=c,
        alpha=alpha,
        dtype=dtype,
        sink_dtype=sink_dtype,
        device=device,
        rope=wan_rope_tables(d, 1, t) if rope else None,
        backend=backend,
    )


def _sink_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- ring_append
def _append_both(dtype, sink_dtype, cfg, rope, chunk_offset=0):
    """Runs the same appends on the CUDA kernel and on the CPU twin; compares after each chunk."""
    t, c, s, w, alpha, b, h, d, chunks = cfg
    gpu = _cache(dtype, sink_dtype, t, c, s, w, alpha, b, h, d, rope, DEV)
    cpu = _cache(dtype, sink_dtype, t, c, s, w, alpha, b, h, d, rope, "cpu")
    rtol, atol = APPEND_TOL[dtype]
    if sink_dtype in APPEND_TOL and APPEND_TOL[sink_dtype][0] > rtol:
        rtol, atol = APPEND_TOL[sink_dtype]
    for i in range(chunks):
        k = torch.randn(b, c * t, h, d, dtype=torch.float64).to(dtype)
        v = torch.randn(b, c * t, h, d, dtype=torch.float64).to(dtype)
        kg, vg = k.to(DEV), v.to(DEV)
        if chunk_offset:  # unaligned (not 16-byte) chunk pointers: the element-wise kernel
            kg = torch.cat([torch.zeros(chunk_offset, dtype=dtype, device=DEV), kg.flatten()])[chunk_offset:].view_as(k)
            vg = torch.cat([torch.zeros(chunk_offset, dtype=dtype, device=DEV), vg.flatten()])[chunk_offset:].view_as(v)
        gpu.layer(0).append(kg, vg)
        cpu.layer(0).append(k, v)
        for name in ("k", "v", "sink_k", "sink_v", "state"):
            got, want = getattr(gpu, name).cpu(), getattr(cpu, name)
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name} after chunk {i}: {m}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_ring_append_matches_cpu_twin(cfg, dtype):
    _append_both(dtype, _sink_dtype(dtype), cfg, rope=cfg[7] >= 6)


@pytest.mark.parametrize(
    "dtype,sink_dtype",
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float16),
        (torch.bfloat16, torch.float64),
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.float32),
        (torch.float64, torch.float32),
    ],
)
@pytest.mark.parametrize("rope", [True, False])
def test_ring_append_sink_dtypes(dtype, sink_dtype, rope):
    _append_both(dtype, sink_dtype, (4, 3, 3, 3, 0.9, 2, 2, 64, 6), rope)


@pytest.mark.parametrize(
    "cfg,rope,offset",
    [
        ((3, 2, 2, 3, 0.8, 1, 2, 6, 7), True, 0),  # D = 6: no 16-byte vectors, pairs only
        ((3, 2, 2, 3, 0.8, 2, 2, 7, 7), False, 0),  # odd D (no RoPE): element by element
        ((3, 2, 2, 3, 0.8, 2, 2, 64, 7), True, 1),  # unaligned chunk pointers
    ],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ring_append_scalar_paths(cfg, rope, offset, dtype):
    _append_both(dtype, torch.float32, cfg, rope, chunk_offset=offset)


# ----------------------------------------------------------------------------- attention
def _reference_attention(q, k, v, lc, cache, scale, rows=None):
    """float64 attention of (a subset of) the chunk's queries over the cache as stored."""
    n = int(lc.state.item())
    t, s, w = cache.frame_tokens, cache.sink_frames, cache.window_frames
    kc, vc = reference.gather_context(lc.k, lc.v, n, t, s, w)
    q64, k64, v64 = q.double(), k.double(), v.double()
    if cache.rope_freqs is not None:
        pos = torch.arange(n, n + q.shape[1] // t, device=q.device)
        cos, sin = rope_cos_sin(cache.rope_freqs, cache.rope_spatial, pos, torch.float64)
        q64, k64 = rope_rotate(q64, cos, sin), rope_rotate(k64, cos, sin)
    if rows is not None:
        q64 = q64[:, rows]
    keys = torch.cat([kc.double(), k64], 1)
    values = torch.cat([vc.double(), v64], 1)
    return reference.attention(q64, keys, values, scale)


def _attention_sweep(dtype, t, c, s, w, b, h, d, rope, chunks, backends=("kernel", "sdpa")):
    cache = _cache(dtype, _sink_dtype(dtype), t, c, s, w, 0.8, b, h, d, rope, DEV)
    lc = cache.layer(0)
    scale = d**-0.5
    for i in range(chunks):
        q, k, v = (torch.randn(b, c * t, h, d, device=DEV, dtype=torch.float64).to(dtype) for _ in range(3))
        want = _reference_attention(q, k, v, lc, cache, scale)
        for backend in backends:
            got = lc.attend(q, k, v, backend=backend)
            assert got.dtype == dtype and got.shape == q.shape
            err = (got.double() - want).abs().max().item()
            assert err < ATTN_TOL[dtype], (
                f"{backend} chunk {i} (n={cache.frames_appended[0]}): max|err| {err:.3e} >= {ATTN_TOL[dtype]}"
            )
        lc.append(k, v)


ATTN_SHAPES = [  # (T, C, S, W, B, H, chunks): first chunks, partial sink, ring wrap, S = 0, W = 0
    (67, 3, 3, 3, 2, 3, 5),  # Lq = 201: two 128-query tiles, ragged key tiles
    (5, 2, 3, 4, 1, 2, 8),
    (13, 3, 0, 3, 1, 2, 5),
    (9, 2, 2, 0, 2, 1, 5),
    (16, 1, 1, 2, 1, 2, 6),
]


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=[f"shape{i}" for i in range(len(ATTN_SHAPES))])
@pytest.mark.parametrize(
    "dtype,d",
    [
        (torch.bfloat16, 128),
        (torch.float16, 128),
        (torch.bfloat16, 64),
        (torch.float16, 64),
        (torch.float32, 128),
        (torch.float64, 64),
        (torch.bfloat16, 48),
        (torch.float32, 6),
    ],
)
@pytest.mark.parametrize("rope", [True, False])
def test_attention_matches_float64(shape, dtype, d, rope):
    t, c, s, w, b, h, chunks = shape
    _attention_sweep(dtype, t, c, s, w, b, h, d, rope, chunks)


@pytest.mark.parametrize("env", [{"RF_SWA_TILE": "8x16"}, {"RF_SWA_TILE": "4x16"}, {"RF_SWA_KERNEL": "generic"}])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_variants(monkeypatch, env, dtype):
    """The other tile shapes of the tensor-core kernel and the generic kernel on its shapes."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _attention_sweep(dtype, 67, 3, 3, 3, 2, 3, 128, True, 4, backends=("kernel",))


def test_attention_unaligned_inputs():
    """q/k/v views that are not 16-byte aligned fall back to the generic kernel."""
    t, c, s, w, b, h, d = 8, 2, 2, 2, 1, 2, 64
    cache = _cache(torch.bfloat16, torch.float32, t, c, s, w, 0.8, b, h, d, True, DEV)
    lc = cache.layer(0)
    for _ in range(4):
        lc.append(*(torch.randn(b, c * t, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(2)))
    base = torch.randn(3, b * c * t * h * d + 1, device=DEV, dtype=torch.bfloat16)
    q, k, v = (base[i, 1:].view(b, c * t, h, d) for i in range(3))
    want = _reference_attention(q, k, v, lc, cache, d**-0.5)
    got = lc.attend(q, k, v, backend="kernel")
    assert (got.double() - want).abs().max().item() < ATTN_TOL[torch.bfloat16]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"cfg{i}" for i in range(len(CONFIGS))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("backend", ["kernel", "sdpa"])
def test_streaming_matches_naive_oracle(cfg, dtype, backend):
    """The whole stream (appends + attention, CUDA) against docs/design.md §2's float64 frame-list oracle."""
    t, c, s, w, alpha, b, h, d, chunks = cfg
    q, k, v = (torch.randn(b, chunks * c * t, h, d, dtype=torch.float64) for _ in range(3))
    rope = wan_rope_tables(d, 1, t) if d >= 6 else None
    kw = dict(frame_tokens=t, chunk_frames=c, sink_frames=s, window_frames=w, alpha=alpha, rope=rope)
    want = functional.streaming_attention(q, k, v, backend="naive", **kw)
    low = [x.to(device=DEV, dtype=dtype) for x in (q, k, v)]
    got = functional.streaming_attention(*low, backend=backend, **kw)
    assert got.dtype == dtype and got.device.type == "cuda"
    tol = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 1e-4}[dtype]
    torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=tol)


def test_published_shape():
    """B=1, 12 heads, D=128, T=1560 (30x52), S=W=C=3, Wan RoPE, bf16: attention (kernel and SDPA)
    vs float64 on sampled queries, and ring_append vs the pure-PyTorch reference, over 4 chunks."""
    b, h, d, t, s, w, c = 1, 12, 128, 1560, 3, 3, 3
    cache = reward_forcing.StreamingKVCache(
        1,
        b,
        h,
        d,
        frame_tokens=t,
        sink_frames=s,
        window_frames=w,
        chunk_frames=c,
        alpha=0.999,
        dtype=torch.bfloat16,
        device=DEV,
        rope=wan_rope_tables(d, 30, 52),
        backend="kernel",
    )
    lc = cache.layer(0)
    rows = torch.randperm(c * t, device=DEV)[:384]
    for i in range(4):
        q, k, v = (torch.randn(b, c * t, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(3))
        want = _reference_attention(q, k, v, lc, cache, d**-0.5, rows)
        for backend in ("kernel", "sdpa"):
            got = lc.attend(q, k, v, backend=backend)[:, rows].double()
            err = (got - want).abs().max().item()
            assert err < 2e-2, f"{backend} chunk {i}: max|err| {err:.3e}"
        ref = [x.clone() for x in (lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state)]
        reference.ring_append(*ref, k, v, t, s, w, 0.999, cache.rope_freqs, cache.rope_spatial)
        lc.append(k, v)
        for name, got, want in zip(
            ("k", "v", "sink_k", "sink_v", "state"), (lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state), ref
        ):
            torch.testing.assert_close(got, want, rtol=1.6e-2, atol=4e-2, msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------- CUDA graphs
@pytest.mark.parametrize("backend", ["kernel", "sdpa"])
@pytest.mark.parametrize("rope", [True, False])
def test_cuda_graph_replay_matches_eager(backend, rope):
    """ring_append + attention captured once in the steady state, replayed for several chunks
    (positions and eviction slots come from the device counter), equal to eager execution."""
    t, c, s, w, b, h, d = 40, 3, 3, 3, 1, 4, 128
    make = lambda: _cache(torch.bfloat16, torch.float32, t, c, s, w, 0.9, b, h, d, rope, DEV, backend)  # noqa: E731
    eager, graphed = make(), make()
    le, lg = eager.layer(0), graphed.layer(0)
    new = lambda: [torch.randn(b, c * t, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(3)]  # noqa: E731
    q_s, k_s, v_s = new()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():  # reach the steady state (+1 chunk), eagerly
        for _ in range((s + w) // c + 2):
            q, k, v = new()
            for layer in (le, lg):
                layer.attend(q, k, v)
                layer.append(k, v)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out_s = lg.attend(q_s, k_s, v_s)
        lg.append(k_s, v_s)
    for i in range(5):
        q, k, v = new()
        for dst, src in zip((q_s, k_s, v_s), (q, k, v)):
            dst.copy_(src)
        graph.replay()
        with torch.no_grad():
            out_e = le.attend(q, k, v)
            le.append(k, v)
        tol = 0 if backend == "kernel" else 2e-3  # our kernels are deterministic: bitwise equal
        torch.testing.assert_close(out_s, out_e, rtol=0, atol=tol, msg=lambda m: f"replay {i}: {m}")
        for name in ("k", "v", "sink_k", "sink_v", "state"):
            torch.testing.assert_close(getattr(graphed, name), getattr(eager, name), rtol=0, atol=0)


# ----------------------------------------------------------------------------- opcheck, autograd
def _filled(dtype, frames, d=8, rope=True):
    cache = _cache(dtype, _sink_dtype(dtype), 3, 2, 2, 3, 0.8, 2, 2, d, rope, DEV)
    for _ in range(0, frames, 2):
        x = torch.randn(2, 6, 2, d, device=DEV, dtype=dtype)
        cache.layer(0).append(x, x.flip(1))
    return cache


@pytest.mark.parametrize("frames", [0, 1, 4, 11])
@pytest.mark.parametrize("dtype,d", [(torch.float32, 8), (torch.bfloat16, 64)])
def test_opcheck(frames, dtype, d):
    cache = _filled(dtype, frames, d)
    lc = cache.layer(0)
    q, k, v = (torch.randn(2, 6, 2, d, device=DEV, dtype=dtype, requires_grad=dtype == torch.float32) for _ in range(3))
    torch.library.opcheck(
        torch.ops.reward_forcing.sink_window_attention.default,
        (q, k, v, lc.k, lc.v, lc.state, 3, 2, 3, 0.3, cache.rope_freqs, cache.rope_spatial),
    )
    x = torch.randn(2, 6, 2, d, device=DEV, dtype=dtype)
    torch.library.opcheck(
        torch.ops.reward_forcing.ring_append.default,
        (lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state, x, x, 3, 2, 3, 0.8, cache.rope_freqs, cache.rope_spatial),
    )


@pytest.mark.parametrize("d", [8, 128])
def test_gradients_match_reference(d):
    """Backward through the CUDA kernel op (fp32) against autograd of the float64 reference."""
    cache = _filled(torch.float32, 9, d)
    lc = cache.layer(0)
    q, k, v = (torch.randn(2, 6, 2, d, device=DEV, requires_grad=True) for _ in range(3))
    kw = dict(
        frame_tokens=3,
        sink_frames=2,
        window_frames=3,
        scale=0.3,
        rope_freqs=cache.rope_freqs,
        rope_spatial=cache.rope_spatial,
    )
    weight = torch.randn(2, 6, 2, d, device=DEV)
    out = ops.sink_window_attention(q, k, v, lc.k, lc.v, lc.state, backend="kernel", **kw)
    got = torch.autograd.grad((out * weight).sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    ref = reference.sink_window_attention(
        q64, k64, v64, lc.k.double(), lc.v.double(), lc.state, **{k_: v_ for k_, v_ in kw.items()}
    )
    want = torch.autograd.grad((ref * weight.double()).sum(), (q64, k64, v64))
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)
    for g, w_ in zip(got, want):
        torch.testing.assert_close(g.double(), w_, rtol=1e-3, atol=1e-4)


def test_no_host_sync_in_kernels():
    """Both CUDA ops run under torch.cuda.set_sync_debug_mode('error') (n is read on the device)."""
    cache = _filled(torch.bfloat16, 9, 64)
    lc = cache.layer(0)
    q, k, v = (torch.randn(2, 6, 2, 64, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    args = (3, 2, 3, 64**-0.5, cache.rope_freqs, cache.rope_spatial)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = torch.ops.reward_forcing.sink_window_attention(q, k, v, lc.k, lc.v, lc.state, *args)
        torch.ops.reward_forcing.ring_append(
            lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state, k, v, 3, 2, 3, 0.8, cache.rope_freqs, cache.rope_spatial
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.float()).all()
    assert math.isfinite(out.float().sum().item())


# ----------------------------------------------------------------------------- stage_chunk
@pytest.mark.parametrize("frames", [0, 1, 4, 11])
@pytest.mark.parametrize(
    "dtype,d,rope",
    [
        (torch.bfloat16, 128, True),
        (torch.float16, 64, True),
        (torch.float32, 8, True),
        (torch.float64, 6, True),
        (torch.bfloat16, 6, True),
        (torch.float32, 7, False),
    ],
)
def test_stage_chunk_matches_cpu_twin(frames, dtype, d, rope):
    """Rotated q, and rotated k / v written into the chunk's ring slots (vector, pair and scalar
    paths), equal to the CPU twin up to one rounding step of the stored dtype."""
    t, c, s, w = 3, 2, 2, 3
    gpu = _cache(dtype, _sink_dtype(dtype), t, c, s, w, 0.8, 2, 2, d, rope, DEV)
    cpu = _cache(dtype, _sink_dtype(dtype), t, c, s, w, 0.8, 2, 2, d, rope, "cpu")
    for _ in range(0, frames, c):
        x = torch.randn(2, c * t, 2, d, dtype=torch.float64).to(dtype)
        gpu.layer(0).append(x.to(DEV), x.to(DEV))
        cpu.layer(0).append(x, x)
    q, k, v = (torch.randn(2, c * t, 2, d, dtype=torch.float64).to(dtype) for _ in range(3))
    rtol, atol = APPEND_TOL[dtype]
    outs = []
    for cache, dev in ((gpu, DEV), (cpu, "cpu")):
        lc = cache.layer(0)
        outs.append(
            torch.ops.reward_forcing.stage_chunk(
                q.to(dev), k.to(dev), v.to(dev), lc.k, lc.v, lc.state, t, s, w, cache.rope_freqs, cache.rope_spatial
            ).cpu()
        )
    torch.testing.assert_close(outs[0], outs[1], rtol=rtol, atol=atol)
    # whole buffers: the sink slots carry the two ring_appends' EMA roundings, hence the tolerance
    torch.testing.assert_close(gpu.k.cpu(), cpu.k, rtol=rtol, atol=atol)
    torch.testing.assert_close(gpu.v.cpu(), cpu.v, rtol=rtol, atol=atol)
    ring = slice(s * t, None)  # values only move in the ring: those slots are bitwise equal
    torch.testing.assert_close(gpu.v[:, :, ring].cpu(), cpu.v[:, :, ring], rtol=0, atol=0)


def test_stage_chunk_published_shape_no_sync():
    """B=1, H=12, D=128, T=1560, S=W=C=3 in the steady state, with no host synchronisation."""
    t, rope = 1560, wan_rope_tables(128, 30, 52)
    cache = reward_forcing.StreamingKVCache(1, 1, 12, 128, frame_tokens=t, dtype=torch.bfloat16, device=DEV, rope=rope)
    lc = cache.layer(0)
    for _ in range(3):
        x = torch.randn(1, 3 * t, 12, 128, device=DEV, dtype=torch.bfloat16)
        lc.append(x, x)
    q, k, v = (torch.randn(1, 3 * t, 12, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    want_k = lc.k.clone()  # the reference syncs: it runs after the kernel, outside sync-debug mode
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = torch.ops.reward_forcing.stage_chunk(
            q, k, v, lc.k, lc.v, lc.state, t, 3, 3, cache.rope_freqs, cache.rope_spatial
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want_q = reference.stage_chunk(
        q, k, v, want_k, lc.v.clone(), lc.state, t, 3, 3, cache.rope_freqs, cache.rope_spatial
    )
    torch.testing.assert_close(got.float(), want_q.float(), rtol=1.6e-2, atol=4e-2)
    torch.testing.assert_close(lc.k.float(), want_k.float(), rtol=1.6e-2, atol=4e-2)
