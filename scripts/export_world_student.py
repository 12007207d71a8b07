"""Writes a world student checkpoint (a ``runs/world-*`` trainer checkpoint, EMA weights) as the
embedded default model, python/reward_forcing/weights/world-student.safetensors, with the
streaming settings of configs/world-*.yaml and the run's provenance.

    python scripts/export_world_student.py runs/world-tilted    # or one checkpoint file
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
import yaml

from reward_forcing.models import default as default_model
from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.train.checkpoints import latest_checkpoint


WORLD_FPS = 16.0  # reward_forcing.world's default frame rate, which the world clips are rendered at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a trainer checkpoint or a run folder")
    parser.add_argument("--out", type=Path, default=default_model.WEIGHTS)
    parser.add_argument("--note", default="", help="free text stored in the provenance")
    args = parser.parse_args()
    if args.checkpoint.is_dir():  # a run folder: its newest checkpoint
        found = latest_checkpoint(args.checkpoint)
        if found is None:
            raise SystemExit(f"error: no checkpoint-*.pt in {args.checkpoint}")
        args.checkpoint = found
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    cfg = ckpt["config"]
    model = load_causal_wan(args.checkpoint, dtype=torch.float32)
    scale = PixelCodec().spatial_scale  # the world configs' vae: pixel
    settings = dict(
        height=cfg["latent_height"] * scale,
        width=cfg["latent_width"] * scale,
        fps=WORLD_FPS,
        sink_frames=cfg["sink_frames"],
        window_frames=cfg["window_frames"],
        chunk_frames=cfg["chunk_frames"],
        alpha=cfg["alpha"],
        steps=list(cfg["steps"]),
        shift=cfg["shift"],
    )
    provenance = {
        "checkpoint": str(args.checkpoint),
        "step": ckpt["step"],
        "stage": ckpt["stage"],
        "sha256": hashlib.sha256(args.checkpoint.read_bytes()).hexdigest(),
        "config": yaml.safe_dump(cfg, sort_keys=False),
        "note": args.note,
    }
    path = default_model.export(model, settings, args.out, provenance=provenance)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
