"""Overlapped denoise/decode (reward_forcing.pipelines.overlap): order, backpressure, shutdown,
exceptions, and the pipeline's frames identical with and without overlap (CPU threads; the GPU
test: a second CUDA stream, bit-identical frames and overlapping event timings)."""

import itertools
import random
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from reward_forcing.pipelines.overlap import overlapped


def workers_alive():
    return [t.name for t in threading.enumerate() if t.name in ("rf-denoise", "rf-decode")]


class Counter:
    def __init__(self, n=None, fail_at=None, delay=0.0):
        self.i, self.n, self.fail_at, self.delay = 0, n, fail_at, delay

    def more(self):
        return self.n is None or self.i < self.n

    def produce(self):
        if self.i == self.fail_at:
            raise KeyError(f"boom at {self.i}")
        time.sleep(self.delay * random.random())
        self.i += 1
        return torch.tensor(self.i - 1)


def test_order_preserved_with_jittered_stages():
    random.seed(0)
    src = Counter(n=25, delay=0.004)

    def decode(x):
        time.sleep(0.004 * random.random())
        return int(x) * 10

    assert list(overlapped(src.produce, decode, more=src.more, depth=2)) == [10 * i for i in range(25)]
    assert not workers_alive()


@pytest.mark.parametrize("depth", [1, 2])
def test_backpressure_bounds_the_lead(depth):
    """A caller that stops reading stalls the producer: at most 2 queues of ``depth`` plus one
    item in each thread's hands beyond what was taken."""
    src = Counter()
    it = overlapped(src.produce, lambda x: x, more=src.more, depth=depth)
    taken = [next(it) for _ in range(3)]
    time.sleep(0.3)
    assert src.i <= len(taken) + 2 * depth + 2
    lead = src.i
    time.sleep(0.2)
    assert src.i == lead  # stalled, not slowly creeping
    it.close()
    assert not workers_alive()


def test_close_stops_an_endless_stream_promptly():
    src = Counter(delay=0.01)
    it = overlapped(src.produce, lambda x: x, more=src.more)
    for _ in itertools.islice(it, 4):
        pass
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 1.0 and not workers_alive()
    n = src.i
    time.sleep(0.1)
    assert src.i == n


def test_leaving_a_for_loop_joins_the_threads():
    src = Counter()
    for i, _ in enumerate(overlapped(src.produce, lambda x: x, more=src.more)):
        if i == 2:
            break
    assert not workers_alive()


@pytest.mark.parametrize("stage", ["produce", "decode"])
def test_exceptions_reach_the_caller_in_place(stage):
    src = Counter(n=10, fail_at=4 if stage == "produce" else None)

    def decode(x):
        if stage == "decode" and int(x) == 4:
            raise KeyError("boom in decode")
        return int(x)

    got = []
    with pytest.raises(KeyError, match="boom"):
        for x in overlapped(src.produce, decode, more=src.more):
            got.append(x)
    assert got == [0, 1, 2, 3]
    assert not workers_alive()


def test_before_runs_in_the_producer_and_can_end_the_stream():
    src, seen = Counter(), []

    def before():
        seen.append(threading.current_thread().name)
        return src.i < 3

    assert list(overlapped(src.produce, int, more=src.more, before=before)) == [0, 1, 2]
    assert set(seen) == {"rf-denoise"}
    with pytest.raises(ValueError, match="depth"):
        overlapped(src.produce, int, more=src.more, depth=0)


# ----------------------------------------------------------------------------- the pipeline
def tiny(**kwargs):
    from reward_forcing.pipelines import StreamingPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StreamingPipeline.tiny_random(height=16, width=16, **kwargs)


@pytest.fixture(scope="module")
def _diffusers():
    pytest.importorskip("diffusers")


def test_pipeline_frames_identical_with_overlap(_diffusers):
    """Same seed, prompt switches and end trimming: the overlapped stream's frames equal the
    sequential one's, bit for bit."""
    switches = [(0.0, "a red ball"), (1.2, "a blue cube")]
    kw = dict(seed=3, prompts=switches)
    plain, over = tiny(overlap=False), tiny(overlap=True)
    assert not plain.overlap and over.overlap and tiny().overlap is False  # auto: off on a CPU
    want = plain.generate(None, 3.3, **kw)
    got = over.generate(None, 3.3, **kw)
    assert got.shape == want.shape == (53, 16, 16, 3)
    np.testing.assert_array_equal(got, want)
    assert not workers_alive()


def test_pipeline_overlap_early_close_cannot_resume(_diffusers):
    pipe = tiny(overlap=True)
    it = pipe.stream("a red ball", None)
    next(it)
    it.close()
    assert not workers_alive()
    with pytest.raises(RuntimeError, match="no stream"):
        pipe.resume()


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_overlapped_frames_bit_identical_and_timings_overlap():
    """On CUDA: the decode runs on a second stream. Frames equal the sequential loop's bit for
    bit; CUDA events around each denoise and decode show chunk k's decode overlapping chunk
    k+1's denoise in GPU time."""
    from reward_forcing.models.causal_wan import CausalWanModel
    from reward_forcing.models.text_encoder import HashedTextEncoder
    from reward_forcing.models.tiny_decoder import TinyDecoder
    from reward_forcing.models.wan_config import WAN_TINY
    from reward_forcing.pipelines import StreamingPipeline

    torch.manual_seed(0)
    model = CausalWanModel(WAN_TINY).cuda()
    decoder = TinyDecoder().cuda().eval()
    text = HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len).cuda()

    def make(overlap):
        return StreamingPipeline(model, decoder, text, height=256, width=448, overlap=overlap)

    want = make(False).generate("a red ball", 6.0, seed=1)
    pipe = make(True)
    spans = {"denoise": [], "decode": []}

    def timed(name, fn):
        def run(*args):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            spans[name].append((start, end))
            return out

        return run

    pipe.next_latents = timed("denoise", pipe.next_latents)
    pipe.decode_latents = timed("decode", pipe.decode_latents)
    got = pipe.generate("a red ball", 6.0, seed=1)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(got, want)
    base = spans["denoise"][0][0]
    den = [(base.elapsed_time(a), base.elapsed_time(b)) for a, b in spans["denoise"]]
    dec = [(base.elapsed_time(a), base.elapsed_time(b)) for a, b in spans["decode"]]
    overlaps = [min(dec[k][1], den[k + 1][1]) - max(dec[k][0], den[k + 1][0]) for k in range(len(dec) - 1)]
    print("denoise ms", den, "\ndecode ms", dec, "\noverlap ms", overlaps)
    assert max(overlaps) > 0, "no decode overlapped the next chunk's denoising"
