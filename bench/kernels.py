"""GPU benchmark of the streaming-attention step and ring_append, side by side in one run.

    python bench/kernels.py [--out DIR] [--budget SECONDS] [--quick]

Attention (B=1, 12 heads, D=128, bf16, S=C=3; published shape T=1560, W=3: 4680 queries over
14040 keys; sweeps over window frames 3/6/12/24 and frame tokens 390/1560/3600):
  (a)  our kernel: the whole step, incl. the chunk's fused RoPE (torch.ops sink_window_attention),
       default tiles 4 warps x 32 queries; also 8 warps x 16 (RF_SWA_TILE=8x16) and 4 x 16 (4x16);
  (a') the same storage served by SDPA (ops._attention_sdpa steady state: RoPE of q/k in torch,
       the chunk's keys/values written into their free ring slots, one dense SDPA call);
  (b)  the public Reward Forcing / Self Forcing path as written: roll the window by copy, RoPE
       re-applied in float64 complex arithmetic to every cached key and to the queries at each read
       (Wan's rope_apply), torch.cat of sink + window + chunk, SDPA;
  (c)  SDPA alone on a ready, pre-rotated buffer (the bound for (a')), in the buffer's [B, L, H, D]
       layout, and (c2) on contiguous [B, H, L, D] copies;
  (d)  FlexAttention (compiled) over the same buffer with the equivalent visibility mask.
ring_append (published shape and the T sweep): the CUDA kernel (CUDA graph of one call), the
pure-PyTorch reference (copies + EMA in torch ops), and a plain copy_ of the same bytes (ceiling).

Times: CUDA events, median of repeated CUDA-graph replays ((d) and the reference: eager). FLOPs of
attention = 4*B*H*Lq*Lk*D. Writes <out>/<device>-kernels.json and .md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import reward_forcing
from reward_forcing import ops, reference
from reward_forcing.rope import rope_cos_sin, rope_rotate, wan_rope_tables

B, H, D, S, C = 1, 12, 128, 3, 3
DT = torch.bfloat16
DEV = "cuda"
HW = {390: (15, 26), 1560: (30, 52), 3600: (45, 80)}  # frame_tokens -> latent grid (h, w)
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- timing
def _events_median(run, iters, max_s):
    times = []
    start_wall = time.time()
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
        if time.time() - start_wall > max_s and len(times) >= 3:
            break
    return statistics.median(times), len(times)


def time_graph(fn, iters=30, max_s=4.0, warmup=2):
    """Median ms of one call of fn, captured in a CUDA graph and replayed (eager if capture fails)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        ms, n = _events_median(graph.replay, iters, max_s)
        return dict(ms=ms, runs=n, mode="graph")
    except Exception as exc:  # noqa: BLE001
        torch.cuda.synchronize()
        ms, n = _events_median(fn, iters, max_s)
        return dict(ms=ms, runs=n, mode=f"eager ({type(exc).__name__})")


def time_eager(fn, iters=20, max_s=4.0, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms, n = _events_median(fn, iters, max_s)
    return dict(ms=ms, runs=n, mode="eager")


# ----------------------------------------------------------------------------- setup
def make_cache(t, w, rope):
    cache = reward_forcing.StreamingKVCache(
        1,
        B,
        H,
        D,
        frame_tokens=t,
        sink_frames=S,
        window_frames=w,
        chunk_frames=C,
        alpha=0.999,
        dtype=DT,
        device=DEV,
        rope=rope,
        backend="kernel",
    )
    lc = cache.layer(0)
    chunks = (S + w) // C + 2  # steady state, ring wrapped
    for _ in range(chunks):
        k, v = (torch.randn(B, C * t, H, D, device=DEV, dtype=DT) for _ in range(2))
        lc.append(k, v)
    return cache, lc


def public_path_step(t, w, rope):
    """(b): the public code's step on its own buffers: sink [S*T], window [W*T] (un-rotated keys),
    roll by copy, float64 complex RoPE of all keys and the queries, cat, SDPA."""
    freqs, spatial = rope
    half = D // 2
    lk = (S + w + C) * t
    pos = torch.arange(S + w + C, device=DEV)
    ang = (pos.double().view(-1, 1, 1) * freqs.view(1, 1, -1) + spatial.unsqueeze(0)).reshape(lk, 1, half)
    f_keys = torch.polar(torch.ones_like(ang), ang)  # complex128 [Lk, 1, D/2], cached like Wan's freqs
    f_q = f_keys[(S + w) * t :]
    sink_k, sink_v = (torch.randn(B, S * t, H, D, device=DEV, dtype=DT) for _ in range(2))
    win_k, win_v = (torch.randn(B, w * t, H, D, device=DEV, dtype=DT) for _ in range(2))
    q, k, v = (torch.randn(B, C * t, H, D, device=DEV, dtype=DT) for _ in range(3))

    def rope_apply(x, f):  # Wan's rope_apply: float64 complex multiply, back to the model dtype
        xc = torch.view_as_complex(x.to(torch.float64).reshape(x.shape[0], x.shape[1], H, half, 2))
        return torch.view_as_real(xc * f).flatten(3).to(DT)

    def step():
        if w > C:  # roll the window by copy, the chunk enters at its end
            win_k[:, : (w - C) * t].copy_(win_k[:, C * t :].clone())
            win_v[:, : (w - C) * t].copy_(win_v[:, C * t :].clone())
        if w > 0:
            n_new = min(w, C) * t
            win_k[:, w * t - n_new :].copy_(k[:, C * t - n_new :])
            win_v[:, w * t - n_new :].copy_(v[:, C * t - n_new :])
        keys = torch.cat([sink_k, win_k, k], 1)
        values = torch.cat([sink_v, win_v, v], 1)
        kr, qr = rope_apply(keys, f_keys), rope_apply(q, f_q)
        out = F.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2), values.transpose(1, 2))
        return out.transpose(1, 2)

    return step


# ----------------------------------------------------------------------------- attention cases
def attention_case(t, w, budget_left, with_flex, report, save):
    rope = tuple(x.to(DEV) for x in wan_rope_tables(D, *HW[t]))
    cache, lc = make_cache(t, w, rope)
    n = cache.frames_appended[0]
    lq, lk = C * t, (S + w + C) * t
    flops = 4.0 * B * H * lq * lk * D
    q, k, v = (torch.randn(B, lq, H, D, device=DEV, dtype=DT) for _ in range(3))
    scale = D**-0.5
    args = (lc.k, lc.v, lc.state, t, S, w, scale, rope[0], rope[1])
    res = dict(
        frame_tokens=t,
        window_frames=w,
        queries=lq,
        keys=lk,
        frames_appended=n,
        gflop=flops / 1e9,
        results={},
        errors={},
        ratios={},
    )
    report["attention"].append(res)  # saved after every timing, so a timeout keeps what was measured

    def kernel():
        return torch.ops.reward_forcing.sink_window_attention(q, k, v, *args)

    def sdpa():
        return ops._attention_sdpa(q, k, v, lc.k, lc.v, lc.state, t, S, w, scale, rope[0], rope[1], frames_appended=n)

    # correctness of the timed paths against each other (the bench must not time a wrong kernel)
    with torch.no_grad():
        out_a, out_s = kernel(), sdpa()
        torch.cuda.synchronize()
        res["max_abs_diff_kernel_vs_sdpa"] = (out_a.float() - out_s.float()).abs().max().item()
        ref_rows = torch.arange(0, lq, max(1, lq // 256), device=DEV)
        n_ctx = n
        kc, vc = reference.gather_context(lc.k, lc.v, n_ctx, t, S, w)
        pos = torch.arange(n_ctx, n_ctx + C, device=DEV)
        cos, sin = rope_cos_sin(rope[0], rope[1], pos, torch.float64)
        qr64, kr64 = rope_rotate(q.double(), cos, sin), rope_rotate(k.double(), cos, sin)
        want = reference.attention(
            qr64[:, ref_rows], torch.cat([kc.double(), kr64], 1), torch.cat([vc.double(), v.double()], 1), scale
        )
        res["max_abs_err_kernel_vs_fp64"] = (out_a[:, ref_rows].double() - want).abs().max().item()
        res["max_abs_err_sdpa_vs_fp64"] = (out_s[:, ref_rows].double() - want).abs().max().item()
        del kc, vc, want, qr64, kr64

    iters = 30 if flops < 1e12 else 12
    cases = {}
    cases["a_kernel"] = lambda: time_graph(kernel, iters)

    def kernel_tile(tile):
        def run():
            os.environ["RF_SWA_TILE"] = tile
            try:
                return time_graph(kernel, iters)
            finally:
                os.environ.pop("RF_SWA_TILE", None)

        return run

    cases["a_kernel_8x16"] = kernel_tile("8x16")
    cases["a_kernel_4x16"] = kernel_tile("4x16")
    cases["a_prime_sdpa_path"] = lambda: time_graph(sdpa, iters)
    step_b = public_path_step(t, w, rope)
    cases["b_public_path"] = lambda: time_graph(step_b, iters)
    # (c): SDPA on the ready buffer (sdpa() above left the rotated chunk keys in their ring slots)
    qr = rope_rotate(q, *rope_cos_sin(rope[0], rope[1], torch.arange(n, n + C, device=DEV), torch.float32)).to(DT)
    qt, kt, vt = qr.transpose(1, 2), lc.k.transpose(1, 2), lc.v.transpose(1, 2)
    cases["c_sdpa_ready_buffer"] = lambda: time_graph(
        lambda: F.scaled_dot_product_attention(qt, kt, vt, scale=scale), iters
    )
    try:  # which SDPA implementation runs here (flash / cuDNN / efficient), by kernel name
        if not with_flex:  # the published shape only
            raise StopIteration
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
            kernel()
            torch.cuda.synchronize()
        res["gpu_kernels"] = sorted({e.key[:120] for e in prof.key_averages()})[:12]
    except StopIteration:
        pass
    except Exception as exc:  # noqa: BLE001
        res["gpu_kernels"] = [f"profiler failed: {type(exc).__name__}"]
    qc2, kc2, vc2 = (x.contiguous() for x in (qt, kt, vt))
    cases["c2_sdpa_bhld_contiguous"] = lambda: time_graph(
        lambda: F.scaled_dot_product_attention(qc2, kc2, vc2, scale=scale), iters
    )
    if with_flex:

        def flex():
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            # the buffer's visibility mask (sink + window slots) plus the chunk's own ring slots,
            # where sdpa() above wrote the chunk's rotated keys
            visible = reference.context_mask(lc.state, t, S, w, w + C).clone()
            slots = S + (n - S + torch.arange(C, device=DEV)) % (w + C)
            idx = (slots.view(-1, 1) * t + torch.arange(t, device=DEV)).reshape(-1)
            visible[idx] = True

            def mask_mod(b, h, q_idx, kv_idx):
                return visible[kv_idx]

            block_mask = create_block_mask(mask_mod, None, None, lq, lk, device=DEV)
            fa = torch.compile(flex_attention, dynamic=False)
            fn = lambda: fa(qc2, kc2, vc2, block_mask=block_mask, scale=scale)  # noqa: E731
            t0 = time.time()
            out = fn()
            torch.cuda.synchronize()
            compile_s = time.time() - t0
            res["max_abs_diff_flex_vs_kernel"] = (out.transpose(1, 2).float() - out_a.float()).abs().max().item()
            r = time_eager(fn, iters)
            r["compile_s"] = compile_s
            return r

        cases["d_flex_attention"] = flex
    rr = res["results"]

    def ratio(a, b):
        return rr[a]["ms"] / rr[b]["ms"] if a in rr and b in rr else None

    for name, run in cases.items():
        left = budget_left - (time.time() - T0)
        if left < (75 if name == "d_flex_attention" else 0):
            res["errors"][name] = "skipped: time budget"
            continue
        try:
            r = run()
            r["tflops"] = flops / (r["ms"] * 1e-3) / 1e12
            res["results"][name] = r
            log(
                f"  T={t} W={w} {name:26s} {r['ms']:8.3f} ms  {r['tflops']:6.1f} TFLOP/s  "
                f"({r['mode']}, {r['runs']} runs)"
            )
        except Exception as exc:  # noqa: BLE001
            res["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"  T={t} W={w} {name}: FAILED {res['errors'][name]}")
            traceback.print_exc()
        res["ratios"] = _ratios(ratio)
        save()
    cache = lc = None  # frees the buffers before empty_cache (the timing closures hold them)
    torch.cuda.empty_cache()
    return res


def _ratios(ratio):
    return {
        "a/c": ratio("a_kernel", "c_sdpa_ready_buffer"),
        "a'/c": ratio("a_prime_sdpa_path", "c_sdpa_ready_buffer"),
        "a/b": ratio("a_kernel", "b_public_path"),
        "a'/b": ratio("a_prime_sdpa_path", "b_public_path"),
        "a/a'": ratio("a_kernel", "a_prime_sdpa_path"),
        "a_8x16/a": ratio("a_kernel_8x16", "a_kernel"),
        "a_4x16/a": ratio("a_kernel_4x16", "a_kernel"),
        "d/c": ratio("d_flex_attention", "c_sdpa_ready_buffer"),
    }


# ----------------------------------------------------------------------------- ring_append
def ring_append_case(t, w):
    rope = tuple(x.to(DEV) for x in wan_rope_tables(D, *HW[t]))
    cache, lc = make_cache(t, w, rope)
    e = B * t * H * D
    cs, ss = torch.tensor([], dtype=DT).element_size(), cache.sink_k.element_size()
    evicted = C  # steady state: every appended frame evicts one
    nbytes = e * (2 * C * cs * 2 + 2 * evicted * cs + 2 * evicted * ss * 2 + 2 * S * ss + 2 * S * cs)
    k, v = (torch.randn(B, C * t, H, D, device=DEV, dtype=DT) for _ in range(2))
    res = dict(frame_tokens=t, window_frames=w, bytes=nbytes, results={}, errors={})

    def kernel():
        torch.ops.reward_forcing.ring_append(
            lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state, k, v, t, S, w, 0.999, rope[0], rope[1]
        )

    # correctness: one append vs the reference on clones
    ref = [x.clone() for x in (lc.k, lc.v, lc.sink_k, lc.sink_v, lc.state)]
    reference.ring_append(*ref, k, v, t, S, w, 0.999, rope[0], rope[1])
    kernel()
    torch.cuda.synchronize()
    res["max_abs_diff_vs_reference"] = {
        name: (a.float() - b.float()).abs().max().item()
        for name, a, b in zip(("k", "v", "sink_k", "sink_v"), (lc.k, lc.v, lc.sink_k, lc.sink_v), ref)
    }
    res["state_ok"] = bool((lc.state == ref[4]).all().item())
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEV).random_(0, 255)
    dst = torch.empty_like(src)
    cases = {
        "kernel": lambda: time_graph(kernel, 100, max_s=3.0),
        "reference_torch_ops": lambda: time_eager(
            lambda: reference.ring_append(*ref, k, v, t, S, w, 0.999, rope[0], rope[1]), 10, max_s=3.0
        ),
        "copy_same_bytes": lambda: time_graph(lambda: dst.copy_(src), 100, max_s=3.0),
    }
    for name, run in cases.items():
        try:
            r = run()
            r["gbps"] = nbytes / (r["ms"] * 1e-3) / 1e9
            res["results"][name] = r
            log(f"  ring_append T={t} W={w} {name:20s} {r['ms']:8.4f} ms  {r['gbps']:7.1f} GB/s ({r['mode']})")
        except Exception as exc:  # noqa: BLE001
            res["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"  ring_append {name}: FAILED {res['errors'][name]}")
    rr = res["results"]
    if "kernel" in rr and "copy_same_bytes" in rr:
        res["kernel_bandwidth_over_copy"] = rr["kernel"]["gbps"] / rr["copy_same_bytes"]["gbps"]
    if "kernel" in rr and "reference_torch_ops" in rr:
        res["speedup_over_reference"] = rr["reference_torch_ops"]["ms"] / rr["kernel"]["ms"]
    cache = lc = src = dst = None  # frees the buffers (the timing closures hold them)
    torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------- report
def _fmt(x, f="{:.3f}"):
    return "—" if x is None else f.format(x)


def markdown(report):
    lines = [
        f"# Streaming-attention kernels on {report['device']}",
        "",
        f"torch {report['torch']}, CUDA {report['cuda']}; B={B}, H={H}, D={D}, bf16, S=C={S}; "
        "ms = median CUDA-event time (graph replays unless noted).",
        "",
        "## Attention step",
        "",
        "| T | W | Lq x Lk | (a) kernel ms | (a) 8x16 / 4x16 ms | (a') SDPA path ms | (b) public path ms | (c) SDPA ready ms | (c2) BHLD ms | (d) flex ms | (a) TFLOP/s | (c) TFLOP/s | a/c | a'/c | a/b | a'/b | max err (a) vs fp64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["attention"]:
        rr, ra = r["results"], r["ratios"]
        ap_c, ap_b = "a'/c", "a'/b"
        ra = {k: ra.get(k) for k in ("a/c", "a'/c", "a/b", "a'/b")}
        g = lambda k, f="ms": rr.get(k, {}).get(f)  # noqa: E731
        lines.append(
            f"| {r['frame_tokens']} | {r['window_frames']} | {r['queries']}x{r['keys']} | "
            f"{_fmt(g('a_kernel'))} | {_fmt(g('a_kernel_8x16'))} / {_fmt(g('a_kernel_4x16'))} | {_fmt(g('a_prime_sdpa_path'))} | "
            f"{_fmt(g('b_public_path'))} | {_fmt(g('c_sdpa_ready_buffer'))} | {_fmt(g('c2_sdpa_bhld_contiguous'))} | "
            f"{_fmt(g('d_flex_attention'))} | {_fmt(g('a_kernel', 'tflops'), '{:.0f}')} | "
            f"{_fmt(g('c_sdpa_ready_buffer', 'tflops'), '{:.0f}')} | {_fmt(ra['a/c'], '{:.2f}')} | "
            f"{_fmt(ra[ap_c], '{:.2f}')} | {_fmt(ra['a/b'], '{:.2f}')} | "
            f"{_fmt(ra[ap_b], '{:.2f}')} | {_fmt(r.get('max_abs_err_kernel_vs_fp64'), '{:.1e}')} |"
        )
    for r in report["attention"][:1]:
        if r.get("gpu_kernels"):
            lines += [
                "",
                f"GPU kernels of SDPA + our op (T={r['frame_tokens']}, W={r['window_frames']}): "
                + "; ".join(f"`{k}`" for k in r["gpu_kernels"]),
            ]
    lines += [
        "",
        "## ring_append",
        "",
        "| T | W | MB moved | kernel ms | kernel GB/s | copy_ GB/s | kernel/copy | reference ms | speed-up | max diff vs reference (k, sink_k) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["ring_append"]:
        rr = r["results"]
        g = lambda k, f="ms": rr.get(k, {}).get(f)  # noqa: E731
        md = r.get("max_abs_diff_vs_reference", {})
        lines.append(
            f"| {r['frame_tokens']} | {r['window_frames']} | {r['bytes'] / 1e6:.0f} | {_fmt(g('kernel'), '{:.4f}')} | "
            f"{_fmt(g('kernel', 'gbps'), '{:.0f}')} | {_fmt(g('copy_same_bytes', 'gbps'), '{:.0f}')} | "
            f"{_fmt(r.get('kernel_bandwidth_over_copy'), '{:.2f}')} | {_fmt(g('reference_torch_ops'), '{:.3f}')} | "
            f"{_fmt(r.get('speedup_over_reference'), '{:.1f}')} | {_fmt(md.get('k'), '{:.1e}')}, {_fmt(md.get('sink_k'), '{:.1e}')} |"
        )
    errs = [
        (r["frame_tokens"], r["window_frames"], k, e)
        for r in report["attention"] + report["ring_append"]
        for k, e in r["errors"].items()
    ]
    if errs:
        lines += ["", "## Skipped / failed", ""] + [f"- T={t} W={w} {k}: {e}" for t, w, k, e in errs]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--budget", type=float, default=230.0, help="seconds for the whole bench")
    ap.add_argument("--quick", action="store_true", help="published shape only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/kernels.py needs a CUDA GPU")
    if not reward_forcing.HAS_CUDA_KERNELS:
        raise SystemExit("reward_forcing was built without CUDA kernels")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    report = dict(
        device=name,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        capability=list(torch.cuda.get_device_capability()),
        attention=[],
        ring_append=[],
    )
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        (args.out / f"{slug}-kernels.json").write_text(json.dumps(report, indent=2))
        (args.out / f"{slug}-kernels.md").write_text(markdown(report))

    # published shape first (with FlexAttention), then the sweeps; the ring_append cases are cheap
    attn_shapes = [(1560, 3, True)]
    if not args.quick:
        attn_shapes += [(1560, 6, False), (1560, 12, False), (1560, 24, False), (390, 3, False), (3600, 3, False)]
    log(f"device {name}; budget {args.budget:.0f}s")
    for t in [1560] if args.quick else [1560, 390, 3600]:
        log(f"ring_append T={t}")
        try:
            report["ring_append"].append(ring_append_case(t, 3))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            report["ring_append"].append(
                dict(
                    frame_tokens=t,
                    window_frames=3,
                    bytes=0,
                    results={},
                    errors={"case": f"{type(exc).__name__}: {exc}"[:500]},
                )
            )
        save()
    for t, w, flex in attn_shapes:
        if time.time() - T0 > args.budget:
            log(f"skipping T={t} W={w}: time budget")
            continue
        log(f"attention T={t} W={w}")
        n_before = len(report["attention"])
        try:
            attention_case(t, w, args.budget, flex, report, save)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            if len(report["attention"]) == n_before:
                report["attention"].append(
                    dict(
                        frame_tokens=t,
                        window_frames=w,
                        queries=C * t,
                        keys=(S + w + C) * t,
                        results={},
                        ratios={},
                        errors={},
                    )
                )
            report["attention"][-1]["errors"]["case"] = f"{type(exc).__name__}: {exc}"[:500]
        save()
    save()
    print(markdown(report), flush=True)
    log(f"wrote {args.out / (slug + '-kernels.json')} and .md")


if __name__ == "__main__":
    sys.exit(main())
