"""The teacher gate of the embedded world model (docs/design.md §10): CFG samples of the 16 gate
prompts (half from the held-out colour x shape x direction split) x 4 seeds scored with the world's
ground truth, with 95 % intervals (a layout model, WanConfig.layout, gets the places the default pipeline
gives prompts that do not state them), plus the x0 error on object and background pixels per noise
level, the colour and direction binding — the check to pass before spending ODE-init / DMD time on a teacher.

    python bench/world_probe.py training/world-teacher/ema.safetensors --out bench/results/world-teacher-gate

Writes <out>.json, <out>.png (rows: the first seed of each prompt; columns: every 4th frame) and
<out>-x0.png (for 4 held clips: the clip, then the x0 prediction from it noised to 0.95, 0.8, 0.6
and 0.3: where along the noise levels objects get their place, motion and shape).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import MiniLMTextEncoder
from reward_forcing.train.checkpoints import latest_checkpoint
from reward_forcing.train.world_data import WorldClips
from reward_forcing.world import LayoutTextEncoder
from reward_forcing.train.world_probe import (
    SIGMAS,
    colour_binding,
    decode_videos,
    direction_binding,
    gate_prompts,
    sample_videos,
    score_videos,
    summarize,
    x0_errors,
    x0_predictions,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a teacher checkpoint, run folder or weights file")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--raw", action="store_true", help="the raw weights, not the EMA")
    parser.add_argument("--prompts", type=int, default=16, help="gate prompts (even, >= 16)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=16, help="sampling steps (default 16)")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3)")
    parser.add_argument("--shift", type=float, default=3.0, help="noise-level shift (default 3)")
    parser.add_argument(
        "--chunk-frames",
        type=int,
        default=0,
        help="a block-causal teacher's chunk (teacher_chunk_frames; 0: bidirectional)",
    )
    args = parser.parse_args()
    import cv2

    chunk = args.chunk_frames or None
    ckpt = latest_checkpoint(args.checkpoint) or args.checkpoint
    model = load_causal_wan(ckpt, dtype=torch.float32, use_ema=not args.raw).eval()
    text, codec = MiniLMTextEncoder.from_pretrained(text_len=model.config.text_len), PixelCodec()
    places = 0.0
    if model.config.layout:  # as the default pipeline streams it: unplaced gate prompts get their places
        grid = model.config.token_grid(64 // codec.spatial_scale, 64 // codec.spatial_scale)
        text = LayoutTextEncoder(text, *grid, place_unplaced=True, sketch_pixels=model.config.layout_sketch)
        places = 1.0  # held clips whose prompts say where their objects are
    snap = bool(model.config.layout_sketch)  # a drawn layout shows objects where snapped clips start them
    held = WorldClips(codec, 8, start_at_zero=1.0, places=places, snap_places=snap).sample(
        16, np.random.default_rng(12345)
    )
    with torch.no_grad():
        errors = x0_errors(model, text(held.prompts), held, chunk_frames=chunk)
    prompts, seeds = gate_prompts(args.prompts), tuple(range(args.seeds))
    videos = np.concatenate(
        [
            sample_videos(
                model,
                text,
                codec,
                [p],
                seeds,
                steps=args.steps,
                guidance=args.guidance,
                shift=args.shift,
                chunk_frames=chunk,
            )
            for p in prompts
        ]
    )
    rows = score_videos(videos, prompts)
    result = {
        "checkpoint": str(ckpt),
        "ema": not args.raw,
        "sampler": {
            "steps": args.steps,
            "guidance": args.guidance,
            "shift": args.shift,
            "chunk_frames": args.chunk_frames,
        },
        "x0_mse": errors,
        "colour_binding": colour_binding(model, text, codec, chunk_frames=chunk),
        "direction_binding": direction_binding(model, text, codec, chunk_frames=chunk),
        "gate": summarize(rows),
        "samples": [
            {"prompt": prompts[i // len(seeds)], "seed": seeds[i % len(seeds)], **r} for i, r in enumerate(rows)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    strip = np.concatenate([np.concatenate(list(v[::4]), 1) for v in videos[:: len(seeds)]], 0)
    cv2.imwrite(str(args.out.with_suffix(".png")), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    with torch.no_grad():
        shown = held.latents[:4]
        predicted = x0_predictions(
            model, text(held.prompts[:4]), shown, sorted(SIGMAS, reverse=True), chunk_frames=chunk
        )
    frames = [decode_videos(codec, x) for x in (shown, *predicted.values())]
    x0_strip = np.concatenate([np.concatenate(list(f[b, ::4]), 1) for b in range(len(shown)) for f in frames], 0)
    cv2.imwrite(str(args.out.parent / f"{args.out.name}-x0.png"), cv2.cvtColor(x0_strip, cv2.COLOR_RGB2BGR))
    print(json.dumps({k: result[k] for k in ("x0_mse", "colour_binding", "direction_binding", "gate")}, indent=1))


if __name__ == "__main__":
    main()
