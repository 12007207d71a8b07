"""Property-based fuzzing of the C++ ops through ``torch.ops.reward_forcing`` directly (no Python
wrapper checks): random shapes, counters, sizes, dtypes, strides, devices and RoPE tables. Each
call must either raise a Python exception or match the pure-PyTorch reference; a valid input must
match. A crash (segfault, abort, AddressSanitizer report) ends the process, which is why the test
suite runs this file in a subprocess (tests/test_ops_fuzz.py):

    python tests/op_fuzz.py --examples 300 --seed 0

Under AddressSanitizer, build the extension with ``-DRF_ASAN=ON`` beside the normal install and
preload the runtime and libstdc++ (python does not link libstdc++; without it ASAN's
``__cxa_throw`` interceptor aborts on the first C++ exception the ops raise)::

    pip install --no-build-isolation --no-deps --target /tmp/asan-site \
        -C cmake.define.RF_ASAN=ON -C build-dir=build/asan .
    PYTHONPATH=/tmp/asan-site ASAN_OPTIONS=detect_leaks=0 \
        LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
        python tests/op_fuzz.py --examples 1500 --seed 1
"""

from __future__ import annotations

import argparse
import sys

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import reward_forcing  # noqa: F401  (loads the extension)
from reward_forcing import reference

OPS = torch.ops.reward_forcing
ERRORS = (ValueError, TypeError, RuntimeError, IndexError, NotImplementedError)
ABSURD = [-1, -(2**63), 2**31, 2**52, 2**62, 2**63 - 1]
TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def _tensor(shape, dtype, layout):
    """A tensor of ``shape`` that is contiguous, a transposed view or a strided slice."""
    if dtype.is_floating_point:
        make = lambda s: torch.randn(s, dtype=torch.float64).to(dtype)  # noqa: E731
    else:
        make = lambda s: torch.randint(-3, 4, s, dtype=dtype)  # noqa: E731
    if layout == "contiguous" or len(shape) < 2:
        return make(shape)
    if layout == "strided":
        big = make((*shape[:-1], shape[-1] * 2))
        return big[..., ::2]
    return make((shape[0], *shape[2:], shape[1])).movedim(-1, 1)  # dims 1.. permuted view


@st.composite
def cases(draw):
    op = draw(st.sampled_from(["ring_append", "sink_window_attention", "stage_chunk"]))
    B, H = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    D = draw(st.sampled_from([1, 2, 4, 6, 8]))
    T, S, W, C = draw(st.integers(1, 4)), draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(1, 3))
    R = draw(st.integers(max(1, W + C - 1), W + C + 1))  # sometimes one frame too few
    valid = R >= W + C
    # the sizes passed to the op: usually the true ones, sometimes absurd
    sizes = [T, S, W]
    if draw(st.integers(0, 5)) == 0:
        which = draw(st.integers(0, 2))
        sizes[which] = draw(st.sampled_from([0, *ABSURD]))
        valid = False
    n = draw(
        st.one_of(
            st.integers(0, 3 * (S + W + C)), st.just(2**40 + 7), st.sampled_from([*ABSURD, 2**52 - C, 2**52 - C + 1])
        )
    )
    if not 0 <= n <= 2**52 - C:
        valid = False
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.float32, torch.bfloat16, torch.int32]))
    valid &= dtype in (torch.float64, torch.float32)
    sink_dtype = draw(st.sampled_from([torch.float32, torch.float64, dtype]))
    rope = draw(st.sampled_from([None, "tables", "tables", "wrong_shape", "meta", "float32"]))
    if rope is not None and (D % 2 or rope != "tables"):
        valid = False
    if rope == "tables" and n > 1000:
        rope = None  # float64 angles of huge positions: both sides lose all precision
    layouts = [
        draw(st.sampled_from(["contiguous", "contiguous", "transposed", "strided"])) for _ in range(4)
    ]  # q/k/v, cache, sink, state
    alpha = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([float("nan"), 1.5, -0.5])))
    if op == "ring_append" and not 0.0 <= alpha <= 1.0:
        valid = False
    return dict(
        op=op,
        B=B,
        H=H,
        D=D,
        T=T,
        S=S,
        W=W,
        C=C,
        R=R,
        sizes=sizes,
        n=n,
        dtype=dtype,
        sink_dtype=sink_dtype,
        rope=rope,
        layouts=layouts,
        alpha=alpha,
        valid=valid,
    )


def build(c):
    B, H, D, T, S, C, R = c["B"], c["H"], c["D"], c["T"], c["S"], c["C"], c["R"]
    chunk = [_tensor((B, C * T, H, D), c["dtype"], c["layouts"][0]) for _ in range(3)]
    cache = [_tensor((B, (S + R) * T, H, D), c["dtype"], c["layouts"][1]) for _ in range(2)]
    sink = [_tensor((B, S * T, H, D), c["sink_dtype"], c["layouts"][2]) for _ in range(2)]
    state = torch.tensor([c["n"]], dtype=torch.int64)
    if c["layouts"][3] == "strided":
        state = torch.tensor([c["n"], 0], dtype=torch.int64)[::2]
    freqs = spatial = None
    if c["rope"] is not None:
        half = max(D // 2, 1)
        freqs, spatial = torch.rand(half, dtype=torch.float64) * 0.3, torch.rand(T, half, dtype=torch.float64)
        if c["rope"] == "wrong_shape":
            spatial = spatial[:, :-1] if half > 1 else torch.rand(T + 1, half, dtype=torch.float64)
        elif c["rope"] == "meta":
            freqs, spatial = freqs.to("meta"), spatial.to("meta")
        elif c["rope"] == "float32":
            freqs = freqs.float()
    return chunk, cache, sink, state, freqs, spatial


def call(c, fn, tensors):
    (q, k, v), (kc, vc), (sk, sv), state, freqs, spatial = tensors
    T, S, W = c["sizes"]
    if c["op"] == "ring_append":
        fn.ring_append(kc, vc, sk, sv, state, k, v, T, S, W, c["alpha"], freqs, spatial)
        return [kc, vc, sk, sv, state]
    if c["op"] == "stage_chunk":
        out = fn.stage_chunk(q, k, v, kc, vc, state, T, S, W, freqs, spatial)
        return [out, kc, vc]
    return [fn.sink_window_attention(q, k, v, kc, vc, state, T, S, W, 0.5, freqs, spatial)]


def _copy(x):
    """A copy with the same strides (``clone`` makes strided slices contiguous)."""
    if x is None or x.device.type == "meta":
        return x
    y = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)
    return y.copy_(x)


def clone(tensors):
    return [[_copy(x) for x in group] if isinstance(group, list) else _copy(group) for group in tensors]


def check(c) -> None:
    tensors = build(c)
    (kc, _), (sk, _) = tensors[1], tensors[2]
    contiguous = kc.is_contiguous() and (c["op"] != "ring_append" or sk.is_contiguous())
    try:
        got = call(c, OPS, clone(tensors))
    except ERRORS as e:
        assert not (c["valid"] and contiguous), f"a valid input raised {type(e).__name__}: {e}"
        return
    assert contiguous, "a non-contiguous cache or sink was accepted"
    if c["dtype"] not in TOL:
        return  # accepted (e.g. bfloat16): no crash is the property; values are tested elsewhere
    want = call(c, reference, clone(tensors))
    for a, b in zip(got, want):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), (a, b)
        else:
            tol = TOL[c["dtype"]] if a.dtype != torch.float32 else TOL[torch.float32]
            assert torch.allclose(a.double(), b.double(), atol=tol, rtol=tol), (a - b).abs().max()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    @seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cases())
    def run(c):
        check(c)

    run()
    print(f"op_fuzz: {args.examples} examples, seed {args.seed}: no crash, every call raised or matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
