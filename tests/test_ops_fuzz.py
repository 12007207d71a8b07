"""The op boundary as a contract: invalid counters and sizes raise a clear Python error before any
pointer math (each case in its own subprocess, so a crash fails the test instead of killing
pytest), and a seeded hypothesis run (tests/op_fuzz.py) throws random shapes, counters, sizes,
dtypes, strides and RoPE tables at every op through ``torch.ops`` directly: each call raises or
matches the reference, never crashes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reward_forcing

pytestmark = pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="needs the C++ extension")

SETUP = """
import torch, reward_forcing
import reward_forcing.ops  # the fake kernels (the meta device's)
from reward_forcing.cache import StreamingKVCache
ops = torch.ops.reward_forcing
c = StreamingKVCache(1, 1, 2, 8, frame_tokens=4, sink_frames=3, window_frames=3, chunk_frames=3,
                     alpha=0.9, dtype=torch.float32)
L = c.layer(0)
k = v = q = torch.randn(1, 12, 2, 8)
def ring(state, S=3, T=4, W=3, rope=(None, None)):
    ops.ring_append(L.k, L.v, L.sink_k, L.sink_v, state, k, v, T, S, W, 0.9, *rope)
"""

# (name, code that must raise ValueError, words the message must contain). Base b543e33: the
# first three aborted the process (munmap_chunk(): invalid pointer / SIGSEGV), the S*T overflow
# segfaulted, meta RoPE tables were a silent no-op (no error).
CASES = [
    ("negative counter, ring_append", "ring(torch.tensor([-1]))", "state"),
    ("overflowing counter, ring_append", "ring(torch.tensor([2**63 - 2]))", "state"),
    (
        "negative counter, attention",
        "ops.sink_window_attention(q, k, v, L.k, L.v, torch.tensor([-7]), 4, 3, 3, 0.3, None, None)",
        "state",
    ),
    (
        "negative counter, stage_chunk",
        "ops.stage_chunk(q, k, v, L.k, L.v, torch.tensor([-7]), 4, 3, 3, None, None)",
        "state",
    ),
    (
        "S*T overflow",
        "ops.ring_append(L.k, L.v, L.sink_k[:, :0], L.sink_v[:, :0], L.state, k, v, "
        "4, 2**62, 2**63 - 1, 0.9, None, None)",
        "sink_frames",
    ),
    (
        "meta RoPE tables",
        "ring(L.state, rope=(torch.zeros(4, dtype=torch.float64, device='meta'), "
        "torch.zeros(4, 4, dtype=torch.float64, device='meta')))",
        "meta device",
    ),
    ("counter through the Python op, host mirror", "c._frames[0] = -2\nL.append(k, v)", "state"),
]


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name, code, words", CASES, ids=[c[0] for c in CASES])
def test_invalid_counters_and_sizes_raise(name, code, words):
    body = f"try:\n{textwrap.indent(code, '    ')}\nexcept ValueError as e:\n    print('RAISED', e)\n"
    result = run_python(SETUP + body)
    assert result.returncode == 0, f"crashed ({result.returncode}): {result.stderr[-2000:]}"
    assert "RAISED" in result.stdout, f"accepted: {result.stdout} {result.stderr[-500:]}"
    assert words in result.stdout


def test_tampered_stream_state_is_refused():
    """A stream state whose counters were tampered with (negative, or disagreeing with the host
    mirror) is refused by load_state_dict (base b543e33: the next chunk aborted the process)."""
    code = """
import warnings, torch
from reward_forcing.pipelines import StreamingPipeline
warnings.simplefilter("ignore")
pipe = StreamingPipeline.tiny_random(height=32, width=48)
next(pipe.stream("a ball"))
for counters, mirror in (([-12, -12], [-12, -12]), ([3, 3], [9, 9]), ([2**62, 2**62], [2**62, 2**62])):
    state = pipe.state_dict()
    state["cache"]["state"] = torch.tensor(counters).view(2, 1)
    state["cache"]["frames_appended"] = mirror
    try:
        pipe.load_state_dict(state)
        next(pipe.resume())
        print("ACCEPTED", counters, mirror)
    except ValueError as e:
        print("RAISED", e)
"""
    result = run_python(code, timeout=300)
    assert result.returncode == 0, f"crashed ({result.returncode}): {result.stderr[-2000:]}"
    assert result.stdout.count("RAISED") == 3 and "ACCEPTED" not in result.stdout, result.stdout


def test_property_fuzz_seeded():
    """The short, seeded hypothesis run (CI); longer runs and the ASAN build: see op_fuzz.py."""
    script = Path(__file__).with_name("op_fuzz.py")
    result = subprocess.run(
        [sys.executable, str(script), "--examples", "150", "--seed", "0"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"rc {result.returncode}: {result.stdout[-3000:]} {result.stderr[-3000:]}"
    assert "no crash" in result.stdout
