"""StreamingPipeline: the per-chunk algorithm (schedule, fresh noise, t = 0 cache pass), seeds,
prompt switching with and without KV re-cache, save/resume, flat memory, text-encoder use."""

import gc
import io
import itertools
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from reward_forcing.pipelines import StreamingPipeline
from reward_forcing.scheduler import FewStepFlowSchedule

pytest.importorskip("diffusers")

SIZE = 16  # pixels: a 2 x 2 latent, one token per frame (tiny and fast)


def tiny_pipeline(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("height", SIZE)
        kwargs.setdefault("width", SIZE)
        return StreamingPipeline.tiny_random(**kwargs)


def take(iterator, n):
    return list(itertools.islice(iterator, n))


class Spy:
    """Records every transformer call of a pipeline: (input, t, update_cache, output)."""

    def __init__(self, pipe):
        self.calls, self.inner = [], pipe.forward_chunk
        pipe.forward_chunk = self

    def __call__(self, x, t, text, cache, update_cache=False):
        out = self.inner(x, t, text, cache, update_cache=update_cache)
        self.calls.append((x.clone(), t, update_cache, out.float()))
        return out


def test_chunk_sizes_and_lengths():
    pipe = tiny_pipeline()
    chunks = take(pipe.stream("a red ball"), 5)  # endless: stops only when we do
    assert [c.shape for c in chunks] == [(9, SIZE, SIZE, 3)] + [(12, SIZE, SIZE, 3)] * 4
    assert all(c.dtype == np.uint8 for c in chunks)
    assert pipe.generate("a red ball", 2.5).shape == (40, SIZE, SIZE, 3)  # round(2.5 * 16)
    assert [pipe.chunk_start_frame(k) for k in range(4)] == [0, 9, 21, 33]
    assert [pipe.chunk_at(s) for s in (0, 0.5, 9 / 16, 1.0, 2.0)] == [0, 1, 1, 2, 3]


def test_each_chunk_runs_the_schedule_then_the_cache_pass():
    """Replays the noise of the seed: 4 steps at the warped t with x0 = x - sigma v and fresh noise
    in between, then one t = 0 pass with update_cache on the last x0, chunk after chunk."""
    pipe = tiny_pipeline()
    spy = Spy(pipe)
    take(pipe.stream("a red ball", seed=7), 3)
    sched, gen = FewStepFlowSchedule(), torch.Generator().manual_seed(7)
    shape = pipe.latent_shape
    assert len(spy.calls) == 3 * 5
    for chunk in range(3):
        calls = spy.calls[5 * chunk : 5 * chunk + 5]
        x = torch.randn(shape, generator=gen)
        for i, (inp, t, update, v) in enumerate(calls[:4]):
            assert (t, update) == (sched.timesteps[i], False)
            assert torch.equal(inp, x)
            x0 = inp - sched.sigmas[i] * v
            if i < 3:
                x = (1 - sched.sigmas[i + 1]) * x0 + sched.sigmas[i + 1] * torch.randn(shape, generator=gen)
        inp, t, update, _ = calls[4]
        assert (t, update) == (0.0, True) and torch.equal(inp, x0)


def test_same_seed_same_frames():
    pipe = tiny_pipeline()
    a = pipe.generate("a red ball", 2, seed=3)
    b = pipe.generate("a red ball", 2, seed=3)
    c = pipe.generate("a red ball", 2, seed=4)
    d = tiny_pipeline().generate("a red ball", 2, seed=3)  # a fresh pipeline, same weights
    assert np.array_equal(a, b) and np.array_equal(a, d)
    assert not np.array_equal(a, c)


def test_prompt_switch():
    pipe = tiny_pipeline()
    at = pipe.chunk_start_frame(3) / pipe.fps  # seconds at which chunk 3 starts
    base = take(pipe.stream("a red ball"), 6)
    switched = take(pipe.stream("a red ball", prompts=[(at, "a blue square")]), 6)
    recached = take(tiny_pipeline(recache=True).stream("a red ball", prompts=[(at, "a blue square")]), 6)
    assert all(np.array_equal(x, y) for x, y in zip(base[:3], switched[:3]))
    assert not any(np.array_equal(x, y) for x, y in zip(base[3:], switched[3:]))
    assert all(np.array_equal(x, y) for x, y in zip(switched[:3], recached[:3]))
    assert not np.array_equal(switched[3], recached[3])
    # a switch at time 0 replaces the prompt; a re-cache before the first chunk is a no-op
    first = take(pipe.stream(None, prompts=[(0, "a blue square")]), 1)[0]
    assert np.array_equal(first, take(pipe.stream("a blue square"), 1)[0])
    chunks = pipe.stream("a red ball")
    pipe.set_prompt("a blue square", recache=True)
    assert np.array_equal(next(chunks), first)


def test_recache_before_any_eviction_rebuilds_the_cache_exactly():
    """With S = W = C = 3 nothing has left the window after 2 chunks: the kept latents are the
    whole stream, so re-caching under the same prompt reproduces the cache and the stream."""
    pipe = tiny_pipeline(recache=True)
    base = take(pipe.stream("a red ball"), 5)
    at = pipe.chunk_start_frame(2) / pipe.fps
    again = take(pipe.stream("a red ball", prompts=[(at, "a red ball")]), 5)
    assert all(np.array_equal(x, y) for x, y in zip(base, again))


@pytest.mark.parametrize("mode", ["keep", "reinit"])
def test_recache_after_eviction(mode):
    """After evictions the sink is an EMA history: "keep" keeps it exactly, "reinit" rebuilds it
    from the kept latents; the window then holds the re-encoded last W frames."""
    pipe = tiny_pipeline(sink_recache=mode, alpha=0.5)
    take(pipe.stream("a red ball"), 4)
    cache = pipe.cache
    sink = cache.sink_k.clone(), cache.sink_v.clone()
    pipe.set_prompt("a blue square", recache=True)
    kept = cache.sink_frames + cache.window_frames
    assert cache.frames_appended == [kept] * cache.num_layers
    same = torch.equal(cache.sink_k, sink[0]) and torch.equal(cache.sink_v, sink[1])
    assert same == (mode == "keep")
    assert pipe.next_chunk().shape == (12, SIZE, SIZE, 3)


def test_save_and_resume_is_bitwise():
    """Stream 3 chunks, save; 4 more chunks from the same pipeline == 4 chunks from a fresh
    pipeline that loaded the save (through torch.save), a pending prompt switch included."""
    pipe = tiny_pipeline(recache=True)
    at = pipe.chunk_start_frame(5) / pipe.fps
    chunks = pipe.stream("a red ball", 10, seed=11, prompts=[(at, "a blue square")])
    take(chunks, 3)
    buffer = io.BytesIO()
    torch.save(pipe.state_dict(), buffer)
    expected = take(chunks, 4)

    fresh = tiny_pipeline(recache=True)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    resumed = take(fresh.resume(), 4)
    assert all(np.array_equal(x, y) for x, y in zip(expected, resumed))
    assert fresh.prompt == pipe.prompt == "a blue square"
    with pytest.raises(ValueError, match="saved with"):
        tiny_pipeline(window_frames=2).load_state_dict(pipe.state_dict())


def _tensor_bytes(state):
    return sum(
        _tensor_bytes(v) if isinstance(v, dict) else v.nbytes
        for v in state.values()
        if isinstance(v, dict) or torch.is_tensor(v)
    )


def _live_tensor_bytes():
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated module proxies warns
        warnings.simplefilter("ignore")
        return sum(
            t.untyped_storage().nbytes()
            for t in gc.get_objects()
            if isinstance(t, torch.Tensor) and t.device.type == "cpu"
        )


def test_memory_stays_flat_over_hundreds_of_chunks():
    """200 chunks: after the last, the pipeline's state and all live tensors are what they were
    after the tenth, and Python's own allocations no longer grow."""
    pipe = tiny_pipeline()
    chunks = pipe.stream("a red ball")
    take(chunks, 10)
    gc.collect()
    state_bytes = _tensor_bytes(pipe.state_dict())
    tensors = _live_tensor_bytes()
    tracemalloc.start()
    try:
        take(chunks, 40)
        gc.collect()
        after_50 = tracemalloc.get_traced_memory()[0]
        take(chunks, 150)
        gc.collect()
        after_200 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert pipe.chunk_index == 200
    assert _tensor_bytes(pipe.state_dict()) == state_bytes
    assert _live_tensor_bytes() <= tensors  # (other tests' leftovers may be collected meanwhile)
    assert after_200 - after_50 < 128 * 1024  # < 1 KiB per chunk; torch caches fluctuate by tens of KiB


class CountingEncoder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.moves = inner, [], []

    def forward(self, prompts):
        self.calls.append(list(prompts))
        return self.inner(prompts)

    def to(self, *args, **kwargs):
        self.moves.append(args[0] if args else kwargs.get("device"))
        return super().to(*args, **kwargs)


def test_text_encoder_runs_once_per_prompt_and_offloads():
    pipe = tiny_pipeline(offload_text_encoder=True)
    shared = pipe.text_encoder  # the pipeline's SharedTextEncoder does the moves
    shared.encoder = encoder = CountingEncoder(shared.encoder)
    at = pipe.chunk_start_frame(2) / pipe.fps
    take(pipe.stream("a red ball", prompts=[(at, "a blue square"), (2 * at, "a red ball")]), 6)
    assert encoder.calls == [["a red ball", "a blue square"]]
    assert encoder.moves[-1] == "cpu"
    pipe.set_prompt("a green tree")
    assert encoder.calls[-1] == ["a green tree"] and encoder.moves[-1] == "cpu"


def test_bad_arguments():
    pipe = tiny_pipeline()
    for call in (pipe.resume, pipe.next_chunk, pipe.state_dict, lambda: pipe.set_prompt("a ball")):
        with pytest.raises(RuntimeError, match="no stream"):
            call()
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            pipe.stream(bad)
    with pytest.raises(ValueError, match="no prompt"):
        pipe.stream(None)
    for seconds in (0, -1, float("inf"), "x"):
        with pytest.raises(ValueError, match="seconds"):
            pipe.stream("a red ball", seconds)
    with pytest.raises(ValueError, match="switch time"):
        pipe.stream("a red ball", prompts=[(-1, "a blue square")])
    with pytest.raises(ValueError, match="multiples"):
        tiny_pipeline(height=24)
    with pytest.raises(ValueError, match="sink_recache"):
        tiny_pipeline(sink_recache="drop")
