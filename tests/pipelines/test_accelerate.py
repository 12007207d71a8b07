"""Accelerated forward_chunk (reward_forcing.pipelines.accelerate): torch.compile and CUDA graphs
against eager execution of the same stream.

CPU: the compiled blocks equal eager within 1e-4 (float32; measured ~1e-6 over 12 chunks) with no
recompilation after the first forward, whatever the number of blocks and chunks; the CUDA-graph
option falls back to eager on a CPU (bitwise equal); the graph bookkeeping (capture once per
(t, update_cache), static prompt K/V copied at a switch, the host counter advanced after a replayed
cache pass, new streams and re-cache through the same graphs) runs on a CPU through an emulated
graph backend and equals eager bitwise.

GPU (marked ``gpu``, skipped without CUDA and the CUDA kernels): 20-chunk streams with a timed
prompt switch with KV re-cache and an interactive switch without, then a second stream, at 16x16
and 64x112 pixels, attention on SDPA and on our kernel, bf16 and fp32. Tolerances on the model's
outputs (velocities, unit scale) relative to their RMS: graphs vs eager 1e-4 (fp32) and 5e-2
(bf16); compiled vs eager 1e-3 (fp32) and 1e-1 (bf16: inductor fuses elementwise chains without
the intermediate bf16 roundings of eager; the same streams on a CPU's inductor: 3.9e-2 bf16,
1.8e-6 fp32). A stale prompt after a switch gave 0.29 on this random model; wrong slots or
positions more. The GPU tests avoid diffusers (not on the GPU image): a stub latent preview
decodes.
"""

import dataclasses
import itertools
import os
import warnings

import pytest
import torch

import reward_forcing
from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import HashedTextEncoder
from reward_forcing.models.wan_config import WAN_TINY
from reward_forcing.pipelines import CompiledForwardChunk, CUDAGraphForwardChunk, StreamingPipeline
from reward_forcing.scheduler import FewStepFlowSchedule
from reward_forcing.video_io import read_video

HAS_GPU = torch.cuda.is_available() and reward_forcing.HAS_CUDA_KERNELS
requires_gpu = pytest.mark.skipif(
    not HAS_GPU,
    reason=(
        "needs a CUDA GPU" if not torch.cuda.is_available() else "reward_forcing was built without its CUDA kernels"
    ),
)

CACHE_TENSORS = ("k", "v", "sink_k", "sink_v", "state")
GRAPH_KEYS = {(t, False) for t in FewStepFlowSchedule().timesteps} | {(0.0, True)}


class Spy:
    """Wraps a pipeline's forward_chunk; records (t, update_cache, output) of every call and the
    cache's host counters after it."""

    def __init__(self, pipe):
        self.calls, self.mirrors, self.inner = [], [], pipe.forward_chunk
        pipe.forward_chunk = self

    def __call__(self, x, t, text, cache, update_cache=False):
        out = self.inner(x, t, text, cache, update_cache=update_cache)
        self.calls.append((t, update_cache, out.float().cpu()))
        self.mirrors.append(list(cache.frames_appended))
        return out


def run_stream(pipe, chunks, switch_at, interactive_at=None, second=0):
    """``chunks`` chunks with a timed switch (re-cache per the pipeline) at chunk ``switch_at``,
    an interactive switch without re-cache before chunk ``interactive_at``, then a second
    stream of ``second`` chunks. Returns the frames."""
    frames = []
    stream = pipe.stream(
        "a red ball rolls left", seed=5, prompts=[(pipe.chunk_start_frame(switch_at) / pipe.fps, "a blue square")]
    )
    for i in range(chunks):
        if i == interactive_at:
            pipe.set_prompt("a green triangle jumps", recache=False)
        frames.append(next(stream))
    frames += list(itertools.islice(pipe.stream("a yellow star", seed=6), second))
    return frames


def compare_calls(a: Spy, b: Spy, rel_tol: float) -> float:
    """Same call sequence and host counters; max |out_a - out_b| / RMS(out_a) <= rel_tol."""
    assert [(t, u) for t, u, _ in a.calls] == [(t, u) for t, u, _ in b.calls]
    assert a.mirrors == b.mirrors
    worst = 0.0
    for i, ((t, u, x), (_, _, y)) in enumerate(zip(a.calls, b.calls)):
        err = (x - y).abs().max().item() / max(x.pow(2).mean().sqrt().item(), 1e-6)
        assert err <= rel_tol, f"call {i} (t={t}, update_cache={u}): rel err {err:.3g} > {rel_tol}"
        worst = max(worst, err)
    return worst


def assert_same_cache(p, q, exact=True):
    assert p.cache.frames_appended == q.cache.frames_appended
    assert torch.equal(p.cache.state, q.cache.state)
    if exact:
        for name in CACHE_TENSORS:
            assert torch.equal(getattr(p.cache, name), getattr(q.cache, name)), name


def tiny_random(**kwargs):
    pytest.importorskip("diffusers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StreamingPipeline.tiny_random(**kwargs)


@pytest.fixture
def fresh_dynamo():
    """Empty dynamo caches and counters, error_on_recompile on; on small machines inductor
    compiles in this process (no worker pool)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    threads = 1 if (os.cpu_count() or 1) <= 4 else inductor_config.compile_threads
    with torch._dynamo.config.patch(error_on_recompile=True), inductor_config.patch(compile_threads=threads):
        yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def unique_graphs(counters) -> int:
    return counters["stats"]["unique_graphs"]


# ----------------------------------------------------------------------------- CPU: options
def test_accelerate_option_validated():
    with pytest.raises(ValueError, match="accelerate must be one of"):
        tiny_random(height=16, width=16, accelerate="graphs")
    pipe = tiny_random(height=16, width=16, accelerate="cuda-graphs")
    assert isinstance(pipe.forward_chunk, CUDAGraphForwardChunk) and pipe.forward_chunk.cache is pipe.cache


def test_cache_reset_keeps_storage():
    """Captured graphs hold the cache's buffers: reset (new stream, re-cache) must work in place."""
    pipe = tiny_random(height=16, width=16)
    list(itertools.islice(pipe.stream("a red ball"), 3))
    ptrs = [getattr(pipe.cache, n).data_ptr() for n in CACHE_TENSORS]
    pipe.cache.reset()
    assert [getattr(pipe.cache, n).data_ptr() for n in CACHE_TENSORS] == ptrs
    assert pipe.cache.frames_appended == [0] * pipe.cache.num_layers
    assert all(not getattr(pipe.cache, n).any() for n in CACHE_TENSORS)


def test_cli_accelerate(tmp_path, capsys):
    """generate --accelerate cuda-graphs on a CPU: the same video as eager; a bad mode exits 2."""
    pytest.importorskip("av")
    pytest.importorskip("diffusers")
    from reward_forcing.cli import main

    small = ["--random-model", "--height", "32", "--width", "48", "--seconds", "1", "--prompt", "a red ball"]
    videos = []
    for extra in ([], ["--accelerate", "cuda-graphs"]):
        out = tmp_path / f"v{len(videos)}.mp4"
        assert main(["generate", "--out", str(out), *small, *extra]) == 0
        videos.append(list(read_video(out).frames))
    assert len(videos[0]) == len(videos[1]) == 16
    assert all((a == b).all() for a, b in zip(*videos))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(tmp_path / "x.mp4"), *small, "--accelerate", "tensorrt"])
    assert exit_info.value.code == 2 and "--accelerate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CPU: compile
def test_compile_matches_eager_with_no_recompiles(fresh_dynamo):
    """12 chunks at 64x112 (28 tokens per frame) with a prompt switch + KV re-cache, then a new
    stream: compiled blocks equal eager within 1e-4 (rel.), and nothing recompiles after the first
    forward (error_on_recompile is on throughout)."""
    eager = tiny_random(recache=True)
    compiled = tiny_random(recache=True, accelerate="compile")
    assert isinstance(compiled.forward_chunk, CompiledForwardChunk)
    a, b = Spy(eager), Spy(compiled)
    fa = run_stream(eager, 12, switch_at=4, second=2)
    graphs_after = []
    stream = compiled.stream(
        "a red ball rolls left", seed=5, prompts=[(compiled.chunk_start_frame(4) / compiled.fps, "a blue square")]
    )
    fb = []
    for _ in range(12):
        fb.append(next(stream))
        graphs_after.append(unique_graphs(fresh_dynamo))
    fb += list(itertools.islice(compiled.stream("a yellow star", seed=6), 2))
    graphs_after.append(unique_graphs(fresh_dynamo))
    worst = compare_calls(a, b, rel_tol=1e-4)
    assert 0 < graphs_after[0] <= 8 and len(set(graphs_after)) == 1, graphs_after
    assert_frames_close(fa, fb, 1)
    assert_same_cache(eager, compiled, exact=False)
    print(f"compiled vs eager: worst rel err {worst:.2e}, {graphs_after[0]} dynamo graphs")


def test_compile_graphs_shared_by_all_blocks(fresh_dynamo):
    """A 10-block model (more blocks than dynamo's recompile limit of 8): one compile serves every
    block and both cache passes; error_on_recompile would raise on a per-block specialisation."""
    torch.manual_seed(0)
    model = CausalWanModel(dataclasses.replace(WAN_TINY, num_layers=10)).eval()
    cache = model.new_cache(1, 2, 3)
    compiled = CompiledForwardChunk(model)
    text = model.encode_text(torch.randn(1, 5, WAN_TINY.text_dim))
    ref_cache = model.new_cache(1, 2, 3)
    with torch.no_grad():
        for chunk in range(4):
            x = torch.randn(1, 16, 3, 4, 6)
            for t, update in ((937.5, False), (0.0, True)):
                got = compiled(x, t, text, cache, update_cache=update)
                want = model.forward_chunk(x, t, text, ref_cache, update_cache=update)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            if chunk == 0:
                first = unique_graphs(fresh_dynamo)
    assert unique_graphs(fresh_dynamo) == first <= 8
    assert cache.frames_appended == ref_cache.frames_appended == [12] * 10


# ----------------------------------------------------------------------------- CPU: CUDA graphs
def test_cuda_graphs_fall_back_to_eager_on_cpu():
    eager = tiny_random(height=16, width=16, recache=True)
    graphs = tiny_random(height=16, width=16, recache=True, accelerate="cuda-graphs")
    acc = graphs.forward_chunk
    a, b = Spy(eager), Spy(graphs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: a CPU is not an error
        fa = run_stream(eager, 8, switch_at=3, interactive_at=5, second=2)
        fb = run_stream(graphs, 8, switch_at=3, interactive_at=5, second=2)
    assert compare_calls(a, b, rel_tol=0.0) == 0.0
    assert all((x == y).all() for x, y in zip(fa, fb))
    assert acc.captures == acc.replays == 0 and acc.eager_calls == len(b.calls)
    assert_same_cache(eager, graphs)


class EmulatedGraphs:
    """CUDA-graph semantics on a CPU, for the bookkeeping of CUDAGraphForwardChunk: the warm-up
    runs for real; a capture leaves nothing behind (the cache is restored: a real capture runs no
    kernel); a replay re-runs the captured function on its static inputs, keeps its effects on
    tensors and undoes its host-side ones (a real replay runs no Python)."""

    def __init__(self, cache):
        self.cache = cache

    def usable(self, x, cache):
        return True

    def warmup(self, fn):
        return fn()

    def capture(self, fn):
        c = self.cache
        saved = [getattr(c, n).clone() for n in CACHE_TENSORS]
        out = fn()
        for n, s in zip(CACHE_TENSORS, saved):
            getattr(c, n).copy_(s)

        def replay():  # a replay moves the device counters, not the host mirror
            counters = c.counters()
            out.copy_(fn())
            c.restore_counters(counters)

        return replay, out


@pytest.mark.parametrize("sink_recache", ["keep", "reinit"])
def test_graph_bookkeeping_emulated(sink_recache):
    """Graph replays (emulated) equal eager bitwise through a timed switch with re-cache, an
    interactive switch without (static prompt K/V copied, not recaptured) and a second stream;
    one capture per (t, update_cache); the host counter follows the replayed cache passes."""
    kw = dict(height=16, width=16, recache=True, sink_recache=sink_recache)
    eager, graphs = tiny_random(**kw), tiny_random(**kw)
    acc = CUDAGraphForwardChunk(graphs.model, graphs.cache, graph_backend=EmulatedGraphs(graphs.cache))
    graphs.forward_chunk = acc
    a, b = Spy(eager), Spy(graphs)
    fa = run_stream(eager, 14, switch_at=5, interactive_at=9, second=6)
    fb = run_stream(graphs, 14, switch_at=5, interactive_at=9, second=6)
    assert compare_calls(a, b, rel_tol=0.0) == 0.0
    assert all((x == y).all() for x, y in zip(fa, fb))
    assert_same_cache(eager, graphs)
    assert acc.captures == len(acc.graphs) == len(GRAPH_KEYS)
    assert {k[:2] for k in acc.graphs} == GRAPH_KEYS
    assert acc.replays >= 5 * 10 and acc.captures + acc.replays + acc.eager_calls == len(b.calls)


def test_failed_capture_falls_back_to_eager():
    """A capture that raises: the call still returns its (warm-up) result, a warning names the
    error, and the stream goes on eagerly, equal to eager."""

    class Failing(EmulatedGraphs):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    eager, graphs = tiny_random(height=16, width=16), tiny_random(height=16, width=16)
    acc = CUDAGraphForwardChunk(graphs.model, graphs.cache, graph_backend=Failing(graphs.cache))
    graphs.forward_chunk = acc
    a, b = Spy(eager), Spy(graphs)
    run_stream(eager, 5, switch_at=3)
    with pytest.warns(UserWarning, match="capture failed.*not permitted"):
        run_stream(graphs, 5, switch_at=3)
    assert compare_calls(a, b, rel_tol=0.0) == 0.0
    assert acc.captures == acc.replays == 0 and "not permitted" in acc.disabled
    assert acc.eager_calls == len(b.calls) - 1  # the one warm-up that tried to capture


# ----------------------------------------------------------------------------- GPU
class LatentPreview(PixelCodec):
    """A parameter-free stand-in for the Wan VAE (8x space, 4x time): shows 3 latent channels."""

    def __init__(self):
        super().__init__(spatial=8, temporal=4)

    def decode(self, latents):
        s, t = self.spatial_scale, self.temporal_scale
        x = latents[:, :3].float().repeat_interleave(t, 2).repeat_interleave(s, 3)
        return x.repeat_interleave(s, 4).clamp(-1.0, 1.0)


def gpu_pipeline(model, accelerate, size, **kwargs):
    text = HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len).to("cuda")
    return StreamingPipeline(
        model, LatentPreview(), text, height=size[0], width=size[1], recache=True, accelerate=accelerate, **kwargs
    )


def gpu_model(dtype):
    torch.manual_seed(0)
    return CausalWanModel(WAN_TINY).to(device="cuda", dtype=dtype).eval()


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("size", [(16, 16), (64, 112)], ids=["16x16", "64x112"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("cache_backend", ["auto", "kernel"])
def test_cuda_graphs_match_eager(size, dtype, cache_backend):
    """20 chunks + a second stream of 5: graphs equal eager (tolerances in the module doc);
    5 captures (4 denoising steps + the cache pass), all later steady-state calls replay."""
    model = gpu_model(dtype)
    eager = gpu_pipeline(model, "none", size, cache_backend=cache_backend)
    graphs = gpu_pipeline(model, "cuda-graphs", size, cache_backend=cache_backend)
    acc = graphs.forward_chunk
    a, b = Spy(eager), Spy(graphs)
    fa = run_stream(eager, 20, switch_at=6, interactive_at=13, second=5)
    fb = run_stream(graphs, 20, switch_at=6, interactive_at=13, second=5)
    worst = compare_calls(a, b, rel_tol=1e-4 if dtype == torch.float32 else 5e-2)
    assert acc.captures == len(acc.graphs) == len(GRAPH_KEYS), "one capture per (t, update_cache)"
    assert {k[:2] for k in acc.graphs} == GRAPH_KEYS
    assert acc.replays >= 5 * 15 and acc.captures + acc.replays + acc.eager_calls == len(b.calls)
    assert_same_cache(eager, graphs, exact=False)
    assert_frames_close(fa, fb, 2 if dtype == torch.float32 else 64)
    print(
        f"graphs vs eager {size} {dtype} {cache_backend}: worst rel err {worst:.2e}, "
        f"{acc.captures} captures, {acc.replays} replays, {acc.eager_calls} eager calls"
    )


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_compile_matches_eager_cuda(dtype, fresh_dynamo):
    """compile and compile+cuda-graphs vs eager over the same streams at 64x112; no recompile
    (error_on_recompile is on), graphs captured over the compiled blocks once per key."""
    size = (64, 112)
    model = gpu_model(dtype)
    pipes = {mode: gpu_pipeline(model, mode, size) for mode in ("none", "compile", "compile+cuda-graphs")}
    spies = {mode: Spy(p) for mode, p in pipes.items()}
    frames = {mode: run_stream(p, 20, switch_at=6, interactive_at=13, second=5) for mode, p in pipes.items()}
    tol = 1e-3 if dtype == torch.float32 else 1e-1
    for mode in ("compile", "compile+cuda-graphs"):
        worst = compare_calls(spies["none"], spies[mode], rel_tol=tol)
        assert_same_cache(pipes["none"], pipes[mode], exact=False)
        assert_frames_close(frames["none"], frames[mode], 4 if dtype == torch.float32 else 96)
        print(f"{mode} vs eager {dtype}: worst rel err {worst:.2e}")
    acc = spies["compile+cuda-graphs"].inner
    assert isinstance(acc, CUDAGraphForwardChunk) and isinstance(acc.forward, CompiledForwardChunk)
    assert acc.captures == len(GRAPH_KEYS) and acc.replays >= 5 * 15
    assert 0 < unique_graphs(fresh_dynamo) <= 8


def assert_frames_close(fa, fb, levels):
    assert len(fa) == len(fb)
    for i, (x, y) in enumerate(zip(fa, fb)):
        diff = abs(x.astype(int) - y.astype(int)).max()
        assert diff <= levels, f"chunk {i}: frames differ by {diff} levels"
