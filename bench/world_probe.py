"""Where a world teacher stands: its x0 error at fixed noise levels on held-out-free training
clips (against predicting each clip's mean colour), and 16-step CFG samples for four prompts scored
with the world's ground truth — the check to run before spending ODE-init / DMD time on it.

    python bench/world_probe.py runs/world-teacher --out training/world-teacher/probe

Writes <out>.json and <out>.png (rows: prompts; columns: every 4th frame of the 2-s sample).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reward_forcing.eval import evaluate_video
from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import MiniLMTextEncoder
from reward_forcing.scheduler import FewStepFlowSchedule, add_noise, predict_x0, teacher_trajectory, timestep_of
from reward_forcing.train.trainer import latest_checkpoint
from reward_forcing.train.world_data import WorldClips

SIGMAS = (0.3, 0.6, 0.8, 0.95)
PROMPTS = ("a red circle moving to the right on a black background",
           "a large blue square drifting up on a white background",
           "a yellow triangle sliding left on a gray background",
           "a green ball and a pink box moving down on a black background")
NEGATIVE = "static, blurry, low quality"


@torch.no_grad()
def x0_errors(model, text, codec, clips: int = 16, seed: int = 5) -> dict:
    """Mean squared x0 error per noise level, and the error of predicting each clip's mean."""
    x0, prompts = WorldClips(codec, 8, start_at_zero=1.0).sample(clips, np.random.default_rng(seed))
    gen = torch.Generator().manual_seed(seed)
    cond = text(prompts)
    out = {"mean_colour_baseline": float((x0 - x0.mean((2, 3, 4), keepdim=True)).pow(2).mean())}
    for sigma in SIGMAS:
        x_t = add_noise(x0, torch.randn(x0.shape, generator=gen), sigma)
        v = model(x_t, torch.full((clips,), timestep_of(sigma)), cond)
        out[f"sigma_{sigma}"] = float((predict_x0(x_t, v, sigma) - x0).pow(2).mean())
    return out


@torch.no_grad()
def samples(model, text, codec, prompts=PROMPTS, steps: int = 16, guidance: float = 3.0,
            shift: float = 3.0):
    """The teacher's 2-s clips (8 latent frames, its training length) for ``prompts``, sampled
    with ``steps`` Euler steps (noise levels warped by ``shift``) and CFG against the negative
    prompt: (uint8 videos [P, 32, 64, 64, 3], their evaluate_video summaries)."""
    schedule = FewStepFlowSchedule(shift=shift)
    videos, scores = [], []
    for i, prompt in enumerate(prompts):
        noise = torch.randn(1, codec.channels, 8, 16, 16, generator=torch.Generator().manual_seed(i))
        x = teacher_trajectory(model, text([prompt]), text([NEGATIVE]), noise, schedule, guidance, steps)
        video = ((codec.decode(x[:, -1])[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255)
        videos.append(video.byte().numpy())
        scores.append(evaluate_video(videos[-1], prompt)["summary"])
    return np.stack(videos), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a teacher checkpoint or run folder")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--raw", action="store_true", help="the raw weights, not the EMA")
    parser.add_argument("--steps", type=int, default=16, help="sampling steps (default 16)")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale (default 3)")
    parser.add_argument("--shift", type=float, default=3.0, help="noise-level shift (default 3)")
    args = parser.parse_args()
    import cv2

    ckpt = latest_checkpoint(args.checkpoint) or args.checkpoint
    model = load_causal_wan(ckpt, dtype=torch.float32, use_ema=not args.raw).eval()
    text, codec = MiniLMTextEncoder.from_pretrained(text_len=model.config.text_len), PixelCodec()
    errors = x0_errors(model, text, codec)
    videos, scores = samples(model, text, codec, steps=args.steps, guidance=args.guidance,
                             shift=args.shift)
    step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("step")
    keys = ("found", "colour_right", "direction_right", "adherence")
    result = {"checkpoint": str(ckpt), "step": step, "ema": not args.raw, "x0_mse": errors,
              "sampler": {"steps": args.steps, "guidance": args.guidance, "shift": args.shift},
              "samples": {p: {k: s[k] for k in keys} for p, s in zip(PROMPTS, scores)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    strip = np.concatenate([np.concatenate(list(v[::4]), 1) for v in videos], 0)
    cv2.imwrite(str(args.out.with_suffix(".png")), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
