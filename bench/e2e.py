"""End-to-end DiT benchmark on a GPU: Wan-1.3B shape with random weights, streaming at 832x480.

    python bench/e2e.py --out bench/results [--chunks 6] [--backends sdpa,kernel]

Per chunk (3 latent frames = 12 video frames): 4 denoising forwards + the t = 0 cache pass, in
bf16, eager (CUDA graphs and torch.compile are not wired yet). Reports DiT-only FPS per attention
backend, the share of GPU time in attention / GEMM / other kernels (torch.profiler), and peak
memory. The Wan-VAE decode is not included (diffusers is not on the GPU image): FPS with the VAE is
still owed.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.wan_config import WAN_1_3B
from reward_forcing.scheduler import FewStepFlowSchedule

LATENT = (16, 3, 60, 104)  # channels, frames per chunk, 480/8, 832/8
VIDEO_FRAMES_PER_CHUNK = 12


def run_chunk(model, text, cache, sched, gen):
    x = torch.randn(1, *LATENT, device="cuda", dtype=torch.float32, generator=gen)
    for i, (t, sigma) in enumerate(zip(sched.timesteps, sched.sigmas)):
        v = model.forward_chunk(x.to(torch.bfloat16), t, text, cache)
        x0 = sched.predict_x0(x, v.float(), sigma)
        if i + 1 < len(sched.sigmas):
            noise = torch.randn(x.shape, device="cuda", generator=gen)
            x = sched.add_noise(x0, noise, sched.sigmas[i + 1])
    model.forward_chunk(x0.to(torch.bfloat16), 0.0, text, cache, update_cache=True)
    return x0


def classify(name: str) -> str:
    n = name.lower()
    if re.search(r"fmha|flash|sdpa|attention|swa_|softmax", n):
        return "attention"
    if re.search(r"gemm|gemv|cutlass|nvjet|xmma|matmul|sm90_|cublas", n):
        return "gemm"
    return "other"


def bench_backend(model, text, backend, chunks):
    cache = model.new_cache(1, 30, 52, dtype=torch.bfloat16, backend=backend)
    sched = FewStepFlowSchedule()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for _ in range(3):  # fill sink + window: the steady state starts at chunk 2
            run_chunk(model, text, cache, sched, gen)
        torch.cuda.synchronize()
        times = []
        for _ in range(chunks):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            run_chunk(model, text, cache, sched, gen)
            end.record()
            end.synchronize()
            times.append(dict(gpu_ms=start.elapsed_time(end), wall_ms=(time.perf_counter() - t0) * 1e3))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            run_chunk(model, text, cache, sched, gen)
            torch.cuda.synchronize()
    share = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", 0.0) or getattr(evt, "cuda_time_total", 0.0)
        if evt.key.startswith(("cuda", "Memcpy", "Memset", "Activity")):
            continue
        share[classify(evt.key)] += us / 1e3
    wall = statistics.median(t["wall_ms"] for t in times)
    return dict(backend=backend, chunk_wall_ms=wall,
                chunk_gpu_ms=statistics.median(t["gpu_ms"] for t in times),
                dit_fps=VIDEO_FRAMES_PER_CHUNK / (wall / 1e3), gpu_ms_by_kind=share)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--backends", default="sdpa,kernel")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/e2e.py needs a CUDA GPU")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = CausalWanModel(WAN_1_3B).to(torch.bfloat16).eval()
    with torch.no_grad():
        text = model.encode_text(torch.randn(1, 512, WAN_1_3B.text_dim, device="cuda", dtype=torch.bfloat16))
    torch.cuda.reset_peak_memory_stats()
    rows = [bench_backend(model, text, b, args.chunks) for b in args.backends.split(",")]
    device = torch.cuda.get_device_name()
    result = dict(device=device, torch=torch.__version__, shape="Wan-1.3B random weights, 832x480, "
                  "chunk 3 latent frames (12 video frames), S=W=C=3, 4 steps + t=0 pass, bf16, eager",
                  peak_memory_gib=torch.cuda.max_memory_allocated() / 2 ** 30, results=rows)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{slug}-e2e.json").write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['backend']:7s} chunk {r['chunk_wall_ms']:.1f} ms wall / {r['chunk_gpu_ms']:.1f} ms GPU "
              f"-> DiT-only {r['dit_fps']:.1f} FPS; GPU ms by kind {r['gpu_ms_by_kind']}")
    print(f"peak memory {result['peak_memory_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
