"""End-to-end benchmark on a GPU: Wan-1.3B shape with random weights, streaming at 832x480.

    python bench/e2e.py --out bench/results [--chunks 6] [--backends sdpa,kernel]
                        [--modes eager,cuda-graphs,compile] [--vae]

Per chunk (3 latent frames = 12 video frames): 4 denoising forwards + the t = 0 cache pass, in
bf16. Each attention backend (``--backends``) runs in each mode (``--modes``,
reward_forcing.pipelines.accelerate):

* ``eager``: ``CausalWanModel.forward_chunk``;
* ``cuda-graphs``: ``CUDAGraphForwardChunk``, one CUDA graph per denoising step and one for the
  cache pass, captured at the first steady-state chunk (chunk 2) and replayed from then on;
* ``compile``: ``CompiledForwardChunk``, the transformer blocks through ``torch.compile`` (default
  mode) with the cache attention left eager; compiled once, shared by all backends;
* ``compile+cuda-graphs`` (not in the default list): graphs captured over the compiled blocks.

Per row: DiT-only FPS (median wall time of ``--chunks`` chunks after 3 warm-up chunks; the
warm-up holds the compilation and the captures, reported as ``warmup_s``), the share of GPU time
in attention / GEMM / other kernels (torch.profiler, one chunk), peak memory. A mode that fails
gives a row with its ``error`` instead of stopping the run.

``--vae`` adds the Wan VAE decode: diffusers' ``AutoencoderKLWan()`` with its default arguments,
which are the Wan2.1 VAE's (base 96 channels, z 16, dim_mult 1,2,4,4, 2 residual blocks, no
attention scales, temporal downsampling False,True,True: 8x space, 4x time), random weights, bf16,
driven chunk by chunk by ``reward_forcing.models.vae.StreamingVAEDecoder`` (temporal cache kept
across chunks, as the pipeline does). Each row then runs ``--chunks`` chunks more with the decode
after the DiT (no overlap): ``fps_with_vae`` and ``vae_decode_ms`` (GPU time per 12-frame chunk).
diffusers is not on the GPU image: carry its wheel, and those of the pure-Python packages it needs
that the image lacks (huggingface_hub, ...), in ``.whl/`` (bench/gpu_check.sh installs
``.whl/*.whl``); without diffusers ``--vae`` prints a note and the run goes on without it.
(``reward_forcing.models.vae.tiny_random_wan_vae`` is not used: 8 base channels, not
representative.) ``reward_forcing.pipelines`` imports einops: carry that wheel too if the image
lacks it, or only ``eager`` runs.

Writes ``<device>-e2e.json`` (the earlier fields, every row now with ``mode``; ``fps_by_mode``
puts the modes side by side per backend) and ``<device>-e2e.md``.
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
MODES = ("eager", "cuda-graphs", "compile", "compile+cuda-graphs")
WARMUP_CHUNKS = 3  # fill sink + window: the steady state (and the captures) start at chunk 2


def run_chunk(forward_chunk, text, cache, sched, gen):
    x = torch.randn(1, *LATENT, device="cuda", dtype=torch.float32, generator=gen)
    for i, (t, sigma) in enumerate(zip(sched.timesteps, sched.sigmas)):
        v = forward_chunk(x.to(torch.bfloat16), t, text, cache)
        x0 = sched.predict_x0(x, v.float(), sigma)
        if i + 1 < len(sched.sigmas):
            noise = torch.randn(x.shape, device="cuda", generator=gen)
            x = sched.add_noise(x0, noise, sched.sigmas[i + 1])
    forward_chunk(x0.to(torch.bfloat16), 0.0, text, cache, update_cache=True)
    return x0


def classify(name: str) -> str:
    n = name.lower()
    if re.search(r"fmha|flash|sdpa|attention|swa_|softmax", n):
        return "attention"
    if re.search(r"gemm|gemv|cutlass|nvjet|xmma|matmul|sm90_|cublas", n):
        return "gemm"
    return "other"


class Accelerators:
    """The forward_chunk of each mode; the compiled blocks are made once and shared."""

    def __init__(self, model):
        self.model, self._compiled, self.import_error = model, None, None
        try:
            from reward_forcing.pipelines import accelerate
            self.accelerate = accelerate
        except ImportError as e:  # e.g. einops missing on the GPU image
            self.import_error = f"reward_forcing.pipelines does not import: {e}"

    def compiled(self):
        if self._compiled is None:
            self._compiled = self.accelerate.CompiledForwardChunk(self.model)
        return self._compiled

    def forward_chunk(self, mode, cache):
        if mode == "eager":
            return self.model.forward_chunk
        if self.import_error:
            raise RuntimeError(self.import_error)
        compiled = self.compiled() if "compile" in mode else None
        return self.accelerate.make_forward_chunk(self.model, cache, mode, compiled=compiled)


def timed_chunks(forward_chunk, text, cache, sched, gen, chunks, decoder=None):
    """Wall and GPU ms per chunk (and the decode's GPU ms when ``decoder`` is given)."""
    times = []
    for _ in range(chunks):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        t0 = time.perf_counter()
        events[0].record()
        x0 = run_chunk(forward_chunk, text, cache, sched, gen)
        events[1].record()
        if decoder is not None:
            decoder.decode(x0)
        events[2].record()
        events[2].synchronize()
        times.append(dict(wall_ms=(time.perf_counter() - t0) * 1e3,
                          gpu_ms=events[0].elapsed_time(events[2]),
                          decode_ms=events[1].elapsed_time(events[2])))
    return times


def gpu_share(forward_chunk, text, cache, sched, gen):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run_chunk(forward_chunk, text, cache, sched, gen)
        torch.cuda.synchronize()
    share = {"attention": 0.0, "gemm": 0.0, "other": 0.0}
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", 0.0) or getattr(evt, "cuda_time_total", 0.0)
        if evt.key.startswith(("cuda", "Memcpy", "Memset", "Activity")):
            continue
        share[classify(evt.key)] += us / 1e3
    return share


def bench_row(accelerators, model, text, backend, mode, chunks, vae=None):
    with_vae = None
    cache = model.new_cache(1, 30, 52, dtype=torch.bfloat16, backend=backend)
    sched = FewStepFlowSchedule()
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        forward_chunk = accelerators.forward_chunk(mode, cache)
        t0 = time.perf_counter()
        for _ in range(WARMUP_CHUNKS):
            run_chunk(forward_chunk, text, cache, sched, gen)
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t0
        times = timed_chunks(forward_chunk, text, cache, sched, gen, chunks)
        try:
            share = gpu_share(forward_chunk, text, cache, sched, gen)
        except Exception as e:  # the profiler is not what is measured here
            share = {"error": f"{type(e).__name__}: {e}"}
        if vae is not None:
            from reward_forcing.models.vae import StreamingVAEDecoder

            decoder = StreamingVAEDecoder(vae)
            decoder.decode(run_chunk(forward_chunk, text, cache, sched, gen))  # first chunk: 9 frames
            with_vae = timed_chunks(forward_chunk, text, cache, sched, gen, chunks, decoder)
    wall = statistics.median(t["wall_ms"] for t in times)
    row = dict(backend=backend, mode=mode, chunk_wall_ms=wall,
               chunk_gpu_ms=statistics.median(t["gpu_ms"] for t in times),
               dit_fps=VIDEO_FRAMES_PER_CHUNK / (wall / 1e3), gpu_ms_by_kind=share,
               warmup_s=warmup_s, peak_memory_gib=torch.cuda.max_memory_allocated() / 2 ** 30)
    for name in ("captures", "replays", "eager_calls"):
        if hasattr(forward_chunk, name):
            row[name] = getattr(forward_chunk, name)
    if with_vae is not None:
        wall_vae = statistics.median(t["wall_ms"] for t in with_vae)
        row.update(chunk_wall_ms_with_vae=wall_vae, fps_with_vae=VIDEO_FRAMES_PER_CHUNK / (wall_vae / 1e3),
                   vae_decode_ms=statistics.median(t["decode_ms"] for t in with_vae))
    if hasattr(forward_chunk, "clear"):
        forward_chunk.clear()  # the graphs' memory
    return row


def wan21_vae():
    """diffusers' AutoencoderKLWan with its default (= Wan2.1) arguments, random weights, bf16;
    None (with a note) when diffusers is missing."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        print(f"--vae: diffusers does not import ({e}); carry its wheel in .whl/. Running without "
              "the VAE.")
        return None
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan()
    cfg = vae.config
    assert (cfg.base_dim, cfg.z_dim, list(cfg.dim_mult), cfg.num_res_blocks) == (96, 16, [1, 2, 4, 4], 2), cfg
    return vae.to(torch.bfloat16).eval()


def markdown(result) -> str:
    rows = result["results"]
    lines = [f"# End-to-end streaming benchmark: {result['device']}", "",
             f"{result['shape']}; torch {result['torch']}.", "",
             "| backend | mode | DiT FPS | chunk wall / GPU ms | warm-up s | peak GiB | "
             "FPS with VAE | VAE ms/chunk |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['mode']} | error: {r['error'][:120]} | | | | | |")
            continue
        vae = (f"{r['fps_with_vae']:.1f} | {r['vae_decode_ms']:.1f}" if "fps_with_vae" in r else "- | -")
        lines.append(f"| {r['backend']} | {r['mode']} | {r['dit_fps']:.1f} | {r['chunk_wall_ms']:.1f} / "
                     f"{r['chunk_gpu_ms']:.1f} | {r['warmup_s']:.1f} | {r['peak_memory_gib']:.1f} | {vae} |")
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    lines += ["", "DiT-only FPS side by side:", "", "| backend | " + " | ".join(modes) + " |",
              "|---|" + "---|" * len(modes)]
    for backend, by_mode in result["fps_by_mode"].items():
        cells = [f"{by_mode[m]:.1f}" if isinstance(by_mode.get(m), float) else "-" for m in modes]
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--chunks", type=int, default=6, help="timed chunks per row (default 6)")
    ap.add_argument("--backends", default="sdpa,kernel", help="attention backends (default sdpa,kernel)")
    ap.add_argument("--modes", default="eager,cuda-graphs,compile",
                    help=f"comma-separated, of {','.join(MODES)} (default eager,cuda-graphs,compile)")
    ap.add_argument("--vae", action="store_true",
                    help="also time the Wan2.1 VAE decode per chunk (needs diffusers)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: each of {', '.join(MODES)}, got {args.modes}")
    if not torch.cuda.is_available():
        raise SystemExit("bench/e2e.py needs a CUDA GPU")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = CausalWanModel(WAN_1_3B).to(torch.bfloat16).eval()
    with torch.no_grad():
        text = model.encode_text(torch.randn(1, 512, WAN_1_3B.text_dim, device="cuda", dtype=torch.bfloat16))
    vae = wan21_vae() if args.vae else None
    accelerators = Accelerators(model)
    torch.cuda.reset_peak_memory_stats()
    device = torch.cuda.get_device_name()
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    shape = ("Wan-1.3B random weights, 832x480, chunk 3 latent frames (12 video frames), S=W=C=3, "
             f"4 steps + t=0 pass, bf16, modes {','.join(modes)}"
             + (", Wan2.1 VAE (random weights, bf16)" if vae is not None else ""))
    rows, peak = [], 0.0

    def write() -> dict:
        """The results so far (rewritten after every row: a run cut short keeps its rows)."""
        fps_by_mode = {}
        for r in rows:
            fps_by_mode.setdefault(r["backend"], {})[r["mode"]] = r.get("dit_fps")
        result = dict(device=device, torch=torch.__version__, shape=shape, peak_memory_gib=peak,
                      results=rows, fps_by_mode=fps_by_mode)
        (args.out / f"{slug}-e2e.json").write_text(json.dumps(result, indent=2))
        (args.out / f"{slug}-e2e.md").write_text(markdown(result))
        return result

    for backend in args.backends.split(","):
        for mode in modes:
            try:
                rows.append(bench_row(accelerators, model, text, backend, mode, args.chunks, vae))
                peak = max(peak, rows[-1]["peak_memory_gib"])
            except Exception as e:
                rows.append(dict(backend=backend, mode=mode, error=f"{type(e).__name__}: {e}"))
            result = write()
            r = rows[-1]
            if "error" in r:
                print(f"{backend:7s} {mode:20s} ERROR {r['error']}", flush=True)
                continue
            extra = (f"; with VAE {r['fps_with_vae']:.1f} FPS (decode {r['vae_decode_ms']:.1f} ms)"
                     if "fps_with_vae" in r else "")
            print(f"{backend:7s} {mode:20s} chunk {r['chunk_wall_ms']:.1f} ms wall / {r['chunk_gpu_ms']:.1f} ms "
                  f"GPU -> DiT-only {r['dit_fps']:.1f} FPS (warm-up {r['warmup_s']:.1f} s){extra}; "
                  f"GPU ms by kind {r['gpu_ms_by_kind']}", flush=True)
    print(markdown(result))
    print(f"peak memory {peak:.1f} GiB")


if __name__ == "__main__":
    main()
