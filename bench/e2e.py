"""End-to-end benchmark on a GPU: Wan-1.3B shape with random weights, streaming at 832x480.

    python bench/e2e.py --out bench/results [--chunks 6] [--budget 300] [--backend sdpa]
                        [--modes none,none+fused,cuda-graphs,cuda-graphs+fused,compile,compile+cuda-graphs]

Per chunk (3 latent frames = 12 video frames): 4 denoising forwards + the t = 0 cache pass, in
bf16. Three stages, each row written to the JSON as soon as it is measured (a run cut short
keeps its rows; ``--budget`` seconds stop new rows from starting):

1. **DiT only**, every mode (reward_forcing.pipelines.accelerate; ``+fused`` runs the blocks'
   per-token work through reward_forcing.fused, ``CausalWanModel.set_fused``): ``none``,
   ``cuda-graphs`` (one graph per denoising step and one for the cache pass, captured at the
   first steady-state chunk), ``compile`` (the blocks through ``torch.compile``, compiled once
   and shared; the fused ops are what inductor generates there anyway, so no ``compile+fused``),
   ``compile+cuda-graphs``. FPS = 12 frames / median chunk wall time of ``--chunks`` chunks after
   3 warm-up chunks (the warm-up holds compilation and captures: ``warmup_s``); GPU ms by kind
   (attention / GEMM / other, torch.profiler, one chunk); peak memory.
2. **End to end** through ``StreamingPipeline`` (the code a user runs: the pipeline's
   ``forward_chunk`` replaced by the mode's) for ``none`` and the best DiT mode of stage 1, with
   each decoder: the Wan2.1 VAE (diffusers' ``AutoencoderKLWan()`` defaults = Wan2.1 layout, random
   weights; needs diffusers, carried in ``.whl/``) and the light TAEHV-architecture decoder
   (``reward_forcing.models.tiny_decoder.TinyDecoder``, random weights), overlapped (decode of
   chunk k on a second CUDA stream while chunk k+1 is denoised) and sequential. Per row: FPS
   (frames / wall time of ``--chunks`` chunks after the warm-up), first-frame latency from the
   ``stream()`` call to the first decoded frame on a fresh pipeline (``first_frame_cold_s``:
   includes whatever the mode still has to compile) and on a second stream of the same pipeline
   (``first_frame_warm_s``), the decoder's GPU ms per chunk alone, peak memory.
3. **flash-attn** (``backend="flash"``) on the best mode only, DiT only and with the light
   decoder, when flash-attn imports (docs/flash-attn.md); else one row saying why not.

Writes ``<device>-e2e.json`` and ``<device>-e2e.md``. A row that fails carries its ``error``.
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
from reward_forcing.pipelines.accelerate import ACCELERATE_MODES, CompiledForwardChunk, make_forward_chunk
from reward_forcing.scheduler import FewStepFlowSchedule

LATENT = (16, 3, 60, 104)  # channels, frames per chunk, 480/8, 832/8
VIDEO_FRAMES_PER_CHUNK = 12
# the pipeline's accelerate modes, and "+fused" variants of those that do not compile (inductor
# fuses the same per-token work itself)
MODES = tuple(m for a in ACCELERATE_MODES for m in ((a,) if "compile" in a else (a, f"{a}+fused")))
WARMUP_CHUNKS = 3  # fill sink + window: the steady state (and the captures) start at chunk 2
PROMPT = "a red fox running through snow"


def run_chunk(forward_chunk, text, cache, sched, gen):
    x = torch.randn(1, *LATENT, device="cuda", dtype=torch.float32, generator=gen)
    x0 = sched.denoise(
        x,
        lambda x, t: forward_chunk(x.to(torch.bfloat16), t, text, cache),
        lambda x0: torch.randn(x0.shape, device="cuda", generator=gen),
    )
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
        self.model, self._compiled = model, None

    def compiled(self):
        if self._compiled is None:
            self._compiled = CompiledForwardChunk(self.model)
        return self._compiled

    def forward_chunk(self, mode, cache):
        compiled = self.compiled() if "compile" in mode else None
        return make_forward_chunk(self.model, cache, mode, compiled=compiled)


def timed_chunks(forward_chunk, text, cache, sched, gen, chunks):
    """Wall and GPU ms per chunk."""
    times = []
    for _ in range(chunks):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        t0 = time.perf_counter()
        events[0].record()
        run_chunk(forward_chunk, text, cache, sched, gen)
        events[1].record()
        events[1].synchronize()
        times.append(dict(wall_ms=(time.perf_counter() - t0) * 1e3, gpu_ms=events[0].elapsed_time(events[1])))
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


def wan21_vae():
    """diffusers' AutoencoderKLWan with its default (= Wan2.1) arguments, random weights, bf16;
    None (with a note) when diffusers is missing."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        print(f"Wan VAE rows skipped: diffusers does not import ({e}); carry its wheel in .whl/.")
        return None
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLWan()
    cfg = vae.config
    assert (cfg.base_dim, cfg.z_dim, list(cfg.dim_mult), cfg.num_res_blocks) == (96, 16, [1, 2, 4, 4], 2), cfg
    return vae.to(torch.bfloat16).eval()


def split_mode(mode: str) -> tuple[str, bool]:
    """``"cuda-graphs+fused"`` -> ``("cuda-graphs", True)``."""
    fused = mode.endswith("+fused")
    return (mode[: -len("+fused")] if fused else mode), fused


class Run:
    """Rows, the JSON/markdown written after each, and the time budget."""

    def __init__(self, out: Path, budget: float, meta: dict):
        self.out, self.budget, self.meta, self.rows = out, budget, meta, []
        self.start = time.perf_counter()
        slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
        self.json, self.md = out / f"{slug}-e2e.json", out / f"{slug}-e2e.md"

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        result = dict(self.meta, elapsed_s=time.perf_counter() - self.start, results=self.rows)
        self.json.write_text(json.dumps(result, indent=2))
        self.md.write_text(markdown(result))
        print(json.dumps(row), flush=True)
        return row

    def measure(self, row: dict, fn) -> dict:
        """``fn()``'s fields merged into ``row``; a failure or an exhausted budget is recorded."""
        if self.left() <= 0:
            return self.add(dict(row, skipped=f"budget of {self.budget:.0f} s spent"))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            row.update(fn())
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as e:  # one mode failing does not end the run
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        return self.add(row)


def dit_only(accelerators, model, text, backend, mode, chunks):
    base, fused = split_mode(mode)
    model.set_fused(fused)
    cache = model.new_cache(1, 30, 52, dtype=torch.bfloat16, backend=backend)
    sched = FewStepFlowSchedule()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        forward_chunk = accelerators.forward_chunk(base, cache)
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
    wall = statistics.median(t["wall_ms"] for t in times)
    row = dict(
        chunk_wall_ms=wall,
        chunk_gpu_ms=statistics.median(t["gpu_ms"] for t in times),
        fps=VIDEO_FRAMES_PER_CHUNK / (wall / 1e3),
        gpu_ms_by_kind=share,
        warmup_s=warmup_s,
    )
    for name in ("captures", "replays", "eager_calls"):
        if hasattr(forward_chunk, name):
            row[name] = getattr(forward_chunk, name)
    if hasattr(forward_chunk, "clear"):
        forward_chunk.clear()  # the graphs' memory
    return row


def decode_ms(decoder_module, chunks=3) -> float:
    """GPU ms of one steady-state 3-latent-frame decode, alone."""
    from reward_forcing.models.pixel_codec import streaming_decoder

    decoder = streaming_decoder(decoder_module)
    x = torch.randn(1, *LATENT, device="cuda")
    decoder.decode(x)  # the stream's first chunk (fewer frames)
    times = []
    for _ in range(chunks):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        decoder.decode(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def end_to_end(accelerators, model, text_encoder, decoder_module, backend, mode, overlap, chunks):
    """Through StreamingPipeline: first frame cold and warm, then FPS after the warm-up."""
    from reward_forcing.pipelines import StreamingPipeline

    base, fused = split_mode(mode)
    model.set_fused(fused)
    pipe = StreamingPipeline(
        model, decoder_module, text_encoder, height=480, width=832, cache_backend=backend, overlap=overlap
    )
    pipe.forward_chunk = forward_chunk = accelerators.forward_chunk(base, pipe.cache)
    row = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        stream = pipe.stream(PROMPT, None)
        next(stream)
        row["first_frame_cold_s"] = time.perf_counter() - t0
        for _ in range(WARMUP_CHUNKS):
            next(stream)
        stream.close()
        t0 = time.perf_counter()
        stream = pipe.stream(PROMPT, None, seed=1)
        next(stream)
        row["first_frame_warm_s"] = time.perf_counter() - t0
        for _ in range(WARMUP_CHUNKS):  # into the steady state (CUDA graphs replay from here)
            next(stream)
        t0 = time.perf_counter()
        frames = sum(len(next(stream)) for _ in range(chunks))
        wall = time.perf_counter() - t0
        stream.close()
        row.update(fps=frames / wall, chunk_wall_ms=wall / chunks * 1e3, decode_gpu_ms=decode_ms(decoder_module))
    if hasattr(forward_chunk, "clear"):
        forward_chunk.clear()
    return row


def flash_available() -> str | None:
    """None when flash-attn imports, else why not."""
    from reward_forcing import ops

    try:
        ops.flash_attn_func()
        return None
    except ImportError as e:
        return str(e)


def markdown(result) -> str:
    lines = [
        f"# End-to-end streaming benchmark: {result['device']}",
        "",
        f"{result['shape']}; torch {result['torch']}.",
        "",
        "| stage | backend | mode | decoder | overlap | FPS | chunk ms (wall) | first frame cold / warm s | "
        "decode GPU ms | GPU ms attn / GEMM / other | warm-up s | peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt="{:.1f}"):
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    for r in result["results"]:
        share = r.get("gpu_ms_by_kind") or {}
        kinds = " / ".join(f(share.get(k), "{:.0f}") for k in ("attention", "gemm", "other")) if share else "-"
        first = (
            f"{f(r.get('first_frame_cold_s'), '{:.2f}')} / {f(r.get('first_frame_warm_s'), '{:.2f}')}"
            if "first_frame_warm_s" in r
            else "-"
        )
        note = r.get("error") or r.get("skipped") or ""
        lines.append(
            f"| {r['stage']} | {r['backend']} | {r['mode']} | {r.get('decoder', '-')} | "
            f"{r.get('overlap', '-')} | {f(r.get('fps'))} | {f(r.get('chunk_wall_ms'))} | {first} | "
            f"{f(r.get('decode_gpu_ms'))} | {kinds} | {f(r.get('warmup_s'))} | "
            f"{f(r.get('peak_memory_gib'))} | {note[:160]} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--chunks", type=int, default=6, help="timed chunks per row (default 6)")
    ap.add_argument("--backend", default="sdpa", help="attention backend of the cache (default sdpa)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"stage 1 modes, of {','.join(MODES)}")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds after which no new row starts (default 300)")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: each of {', '.join(MODES)}, got {args.modes}")
    if not torch.cuda.is_available():
        raise SystemExit("bench/e2e.py needs a CUDA GPU")
    from reward_forcing.models.text_encoder import HashedTextEncoder
    from reward_forcing.models.tiny_decoder import TinyDecoder

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = CausalWanModel(WAN_1_3B).to(torch.bfloat16).eval()
        light = TinyDecoder().to(torch.bfloat16).eval()
    text_encoder = HashedTextEncoder(WAN_1_3B.text_dim, WAN_1_3B.text_len).cuda()
    with torch.no_grad():
        text = model.encode_text(text_encoder([PROMPT]))
    decoders = {"light (TAEHV arch.)": light}
    vae = wan21_vae()
    if vae is not None:
        decoders = {"Wan2.1 VAE": vae} | decoders
    accelerators = Accelerators(model)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        shape="Wan-1.3B random weights, 832x480, chunk 3 latent frames (12 video frames), "
        "S=W=C=3, 4 steps + t=0 pass, bf16; decoders with random weights",
        decoders=list(decoders),
        wan_vae=vae is not None,
    )
    run = Run(args.out, args.budget, meta)

    # 1. DiT only, every mode
    fps = {}
    for mode in modes:
        row = run.measure(
            dict(stage="dit", backend=args.backend, mode=mode),
            lambda: dit_only(accelerators, model, text, args.backend, mode, args.chunks),
        )
        if "fps" in row:
            fps[mode] = row["fps"]
    best = max(fps, key=fps.get) if fps else "none"
    print(f"best DiT mode: {best}", flush=True)

    # 2. end to end, no acceleration and the best mode, each decoder, overlapped and sequential
    for mode in dict.fromkeys(["none", best]):
        for name, module in decoders.items():
            for overlap in (True, False):
                run.measure(
                    dict(stage="e2e", backend=args.backend, mode=mode, decoder=name, overlap=overlap),
                    lambda: end_to_end(
                        accelerators, model, text_encoder, module, args.backend, mode, overlap, args.chunks
                    ),
                )

    # 3. flash-attn on the best mode
    why = flash_available()
    if why is not None:
        run.add(dict(stage="flash", backend="flash", mode=best, skipped=f"flash-attn not installed: {why}"[:300]))
    else:
        run.measure(
            dict(stage="dit", backend="flash", mode=best),
            lambda: dit_only(accelerators, model, text, "flash", best, args.chunks),
        )
        run.measure(
            dict(stage="e2e", backend="flash", mode=best, decoder="light (TAEHV arch.)", overlap=True),
            lambda: end_to_end(accelerators, model, text_encoder, light, "flash", best, True, args.chunks),
        )
    model.set_fused(False)
    print(markdown(dict(meta, results=run.rows)))
    print(f"total {time.perf_counter() - run.start:.0f} s")


if __name__ == "__main__":
    main()
