"""CPU microbenchmark: the C++ twins vs the pure-PyTorch reference, side by side in one run.

    python bench/ops_cpu.py [--out bench/results]

Times one whole stream (attend + append per chunk) through StreamingKVCache on each backend and
each op alone; prints a markdown table and writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import reward_forcing
from reward_forcing import StreamingKVCache
from reward_forcing.rope import wan_rope_tables


def _median_s(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(b, h, d, t, s, w, c, chunks, dtype, repeats):
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(b, chunks * c * t, h, d, generator=g).to(dtype) for _ in range(3)]
    rope = wan_rope_tables(d, 1, t)
    step = c * t
    rows = {}
    for backend in ("reference", "kernel"):
        cache = StreamingKVCache(
            1,
            b,
            h,
            d,
            frame_tokens=t,
            sink_frames=s,
            window_frames=w,
            chunk_frames=c,
            alpha=0.999,
            dtype=dtype,
            rope=rope,
            backend=backend,
        )
        layer = cache.layer(0)
        attend_s, append_s = [], []

        def stream():
            cache.reset()
            for i in range(chunks):
                q, k, v = (x[:, i * step : (i + 1) * step] for x in qkv)
                t0 = time.perf_counter()
                layer.attend(q, k, v)
                t1 = time.perf_counter()
                layer.append(k, v)
                attend_s.append(t1 - t0)
                append_s.append(time.perf_counter() - t1)

        total = _median_s(stream, repeats)
        rows[backend] = dict(
            stream_ms=total * 1e3,
            attention_ms=statistics.median(attend_s) * 1e3,
            ring_append_ms=statistics.median(append_s) * 1e3,
        )
    ratio = {k: rows["reference"][k] / rows["kernel"][k] for k in rows["kernel"]}
    return dict(
        shape=dict(B=b, H=h, D=d, frame_tokens=t, S=s, W=w, C=c, chunks=chunks, dtype=str(dtype).replace("torch.", "")),
        reference=rows["reference"],
        cpp=rows["kernel"],
        speedup_cpp_over_reference=ratio,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not reward_forcing.HAS_CPP:
        raise SystemExit("bench/ops_cpu.py needs the compiled extension (pip install --no-build-isolation .)")
    torch.set_num_threads(torch.get_num_threads())
    cases = [  # the reference case first
        (1, 4, 64, 64, 3, 3, 3, 20, torch.float32),
        (1, 4, 64, 64, 3, 3, 3, 20, torch.bfloat16),
        (1, 12, 128, 390, 3, 3, 3, 4, torch.float32),
        (2, 4, 64, 64, 3, 6, 2, 20, torch.float32),
    ]
    results = [bench_case(*case, repeats=args.repeats) for case in cases]
    lines = [
        "| shape | dtype | stream ms (ref / C++) | attention ms (ref / C++) | ring_append ms (ref / C++) | C++ speed-up (stream, attn, append) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        sh, ref, cpp, sp = r["shape"], r["reference"], r["cpp"], r["speedup_cpp_over_reference"]
        lines.append(
            f"| B={sh['B']} H={sh['H']} D={sh['D']} T={sh['frame_tokens']} S={sh['S']} W={sh['W']} "
            f"C={sh['C']} x{sh['chunks']} | {sh['dtype']} | {ref['stream_ms']:.1f} / {cpp['stream_ms']:.1f} | "
            f"{ref['attention_ms']:.2f} / {cpp['attention_ms']:.2f} | {ref['ring_append_ms']:.2f} / "
            f"{cpp['ring_append_ms']:.2f} | {sp['stream_ms']:.2f}x, {sp['attention_ms']:.2f}x, "
            f"{sp['ring_append_ms']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    machine = dict(
        platform=platform.platform(),
        processor=platform.processor(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-ops.json").write_text(json.dumps(dict(machine=machine, results=results), indent=2))
    (args.out / "cpu-ops.md").write_text(f"# CPU ops: C++ twin vs PyTorch reference\n\n{machine}\n\n{table}\n")


if __name__ == "__main__":
    main()
