"""Can the world model learn *where*? A toy that answers in CPU-minutes: the network draws
E[x0 | prompt] from pure noise (noise level 1, one latent frame of clips from frame 0 whose prompts
state each object's start cell, :func:`reward_forcing.world.with_places`). Score (:func:`cell_hits`):
the share of the prompted cells among the cells holding the most predicted object mass. On the held
clips a place-blind prediction (the centred blob every model draws first) scores ~0.33, the clips
themselves ~0.70, the ideal E[mask | place] ~0.88 (docs/design.md §10).

    python bench/world_place_toy.py run ARM --cpu-minutes 15      # one thread, a row per evaluation
    python bench/world_place_toy.py table                          # bench/results/world-place-toy.{json,md}

Arms change one thing against ``zero`` (WAN_WORLD from scratch with the learned, zero-initialised
``absolute_position``, MiniLM states, the x0 loss at lr 3e-4, batch 8), except ``mlp``: the best case,
a per-token MLP on the one-hot token position and one-hot place tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import MiniLMTextEncoder
from reward_forcing.models.wan_config import WAN_WORLD
from reward_forcing.train.world_data import WorldClips
from reward_forcing.world import BACKGROUNDS, COLOURS, PLACES, SHAPES, LayoutTextEncoder, parse_prompt

ROOT = Path(__file__).resolve().parent.parent
TEXT_LEN = 48  # MiniLM tokens: 22 % of placed prompts exceed 32
# name -> (what it changes, options)
ARMS = {
    "zero": ("control: learned absolute position, zero-initialised; MiniLM states; x0 target; lr 3e-4", {}),
    "sincos": ("a fixed 2-D sine/cosine table of each token's row and column (DiT's), unit scale", {"sincos": True}),
    "lr1e-3": ("learning rate 1e-3", {"lr": 1e-3}),
    "oracle": (
        "diagnostic: the text states replaced by one token per object holding its place, colour and "
        "shape as one-hots (is reading the place from MiniLM states the slow part, or drawing it?)",
        {"oracle": True},
    ),
    "oracle-short": (
        "diagnostic: the oracle without the zero padding that takes most of the attention (text_len 3)",
        {"oracle": True, "text_len": 3},
    ),
    "no-noise": (
        "diagnostic: zeros instead of noise as the input (still t = 1000): does the noise in every "
        "token's state hide where it is?",
        {"input": "zeros"},
    ),
    "layout": (
        "the control with a layout (WanConfig.layout): each placed object's words on the tokens of its cell, "
        "added to the first latent frame (world.LayoutTextEncoder)",
        {"layout": True},
    ),
    "mlp": (
        "reference learner: a per-token MLP (512 hidden) on the one-hot token position and the oracle "
        "tokens, the object mask as the target, batch 64, lr 1e-3",
        {"model": "mlp", "oracle": True, "target": "mask", "batch": 64, "lr": 1e-3},
    ),
}


def sincos_table(h: int, w: int, dim: int) -> torch.Tensor:
    """``[h * w, dim]``: DiT's 2-D sine/cosine embedding (half the channels the row, half the column)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(n: int) -> torch.Tensor:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], -1)

    rows, cols = axis(h), axis(w)
    return torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], -1).reshape(h * w, dim).float()


def oracle_states(
    prompts: list[str], text_len: int = TEXT_LEN, text_dim: int = 384, scale: float = 3.0
) -> torch.Tensor:
    """``[n, text_len, text_dim]``: token i = object i's place, colour and shape as one-hots (and a flag
    for i), then a background token; the rest zero padding, as the text encoders pad."""
    places, colours = list(PLACES), list(COLOURS)
    out = torch.zeros(len(prompts), text_len, text_dim)
    for n, prompt in enumerate(prompts):
        spec = parse_prompt(prompt)
        for i, obj in enumerate(spec.objects):
            out[n, i, places.index(obj.place)] = scale
            out[n, i, 9 + colours.index(obj.colour)] = scale
            out[n, i, 9 + len(colours) + SHAPES.index(obj.shape)] = scale
            out[n, i, 32 + i] = scale
        out[n, len(spec.objects), 40 + list(BACKGROUNDS).index(spec.background)] = scale
    return out


class TokenMLP(nn.Module):
    """x0 of one latent frame ``[n, 192, 1, 16, 16]`` from the first 3 text tokens and each token's
    one-hot position in the 8 x 8 grid: the conjunction place x position is one hidden layer away."""

    def __init__(self, text_dim: int = 384, hidden: int = 512, grid: int = 8, out: int = 192 * 4):
        super().__init__()
        self.grid = grid
        self.net = nn.Sequential(nn.Linear(grid * grid + 3 * text_dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        n, g = text.shape[0], self.grid
        position = torch.eye(g * g).expand(n, -1, -1)
        tokens = self.net(torch.cat([position, text[:, :3].flatten(1)[:, None].expand(-1, g * g, -1)], -1))
        return tokens.view(n, g, g, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, -1, 1, 2 * g, 2 * g)


def cell_hits(video: torch.Tensor, background: torch.Tensor, cells: list[list[int]]) -> torch.Tensor:
    """Per clip: the share of its prompted cells (indices into the 3x3 grid, row-major) among the
    cells holding the most object mass ``|video - background|`` (as many cells as the prompt places
    objects; ``video [n, 3, F, H, W]``, ``background [n, 3]``). A background error that is the same
    everywhere does not change it."""
    mass = (video - background[:, :, None, None, None]).abs().sum(1).mean(1)  # [n, H, W]
    per_cell = F.adaptive_avg_pool2d(mass[:, None], 3).flatten(1)  # [n, 9]
    hits = [len(set(per_cell[i].topk(len(c)).indices.tolist()) & set(c)) / len(c) for i, c in enumerate(cells)]
    return torch.tensor(hits)


def prompted_cells(prompt: str) -> list[int]:
    return [PLACES[o.place][1] * 3 + PLACES[o.place][0] for o in parse_prompt(prompt).objects]


def run(arm: str, cpu_minutes: float, out: Path, eval_every: int, seed: int = 0) -> None:
    options = ARMS[arm][1]
    torch.manual_seed(seed)
    text_len = options.get("text_len", TEXT_LEN)
    codec = PixelCodec()
    data = WorldClips(codec, 1, start_at_zero=1.0, places=1.0)
    if options.get("oracle"):
        text = functools.partial(oracle_states, text_len=text_len)
    else:
        text = MiniLMTextEncoder.from_pretrained(text_len=text_len)
    if options.get("layout"):
        text = LayoutTextEncoder(text, 8, 8)
    if options.get("model") == "mlp":
        model: nn.Module = TokenMLP()

        def predict(x, cond):
            return model(cond)
    else:
        config = dataclasses.replace(
            WAN_WORLD, text_len=text_len, absolute_position=True, layout=bool(options.get("layout"))
        )
        model = wan = CausalWanModel(config)
        if options.get("sincos"):
            table = sincos_table(8, 8, config.dim)
            wan._place = lambda h, w: table  # type: ignore[method-assign]  # the toy's stand-in

        def predict(x, cond):
            return x - model(x, 1000.0, cond)  # x0 = x - sigma * velocity at sigma 1

    def inputs(shape, generator=None):
        return torch.zeros(shape) if options.get("input") == "zeros" else torch.randn(shape, generator=generator)

    held = data.sample(64, np.random.default_rng(10**6))
    held_cond, held_x = text(held.prompts), inputs(held.latents.shape, torch.Generator().manual_seed(1))
    if options.get("target") == "mask":
        background = torch.full((len(held.prompts), 3), -1.0)
    else:
        video, on_object = codec.decode(held.latents), codec.decode(held.masks * 2 - 1)[:, :1] > 0
        background = (video * ~on_object).sum((2, 3, 4)) / (~on_object).sum((1, 2, 3, 4))[:, None]
    cells = [prompted_cells(p) for p in held.prompts]

    batch = options.get("batch", 8)
    opt = torch.optim.AdamW(model.parameters(), lr=options.get("lr", 3e-4), betas=(0.9, 0.99), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{arm}.jsonl"
    path.unlink(missing_ok=True)
    start, step = time.process_time(), 0
    while True:
        if step % eval_every == 0:
            with torch.no_grad():
                hits = float(cell_hits(codec.decode(predict(held_x, held_cond)), background, cells).mean())
            cpu = time.process_time() - start
            row = {"step": step, "cpu_s": round(cpu, 1), "cells": round(hits, 4)}
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            if cpu > cpu_minutes * 60:
                break
        clips = data.sample(batch, rng)
        with torch.no_grad():
            cond = text(clips.prompts)
        target = clips.masks * 2 - 1 if options.get("target") == "mask" else clips.latents
        loss = (predict(inputs(clips.latents.shape), cond) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1


def table(root: Path, results: Path) -> None:
    """One row per arm run under ``root``: its last evaluation, its best, and the first evaluation at
    >= 0.5 (where it leaves the place-blind plateau); arms without a log there keep their row of the
    committed table."""
    saved = results / "world-place-toy.json"
    rows = json.loads(saved.read_text()) if saved.is_file() else {}
    for path in sorted(root.glob("*.jsonl")):
        if path.stem not in ARMS:
            continue
        log = [json.loads(line) for line in path.read_text().splitlines()]
        batch = ARMS[path.stem][1].get("batch", 8)
        above = next((r["step"] * batch for r in log if r["cells"] >= 0.5), None)
        rows[path.stem] = {
            "what": ARMS[path.stem][0],
            "batch": batch,
            "last": log[-1],
            "best": max(r["cells"] for r in log),
            "clips_to_0.5": above,
        }
    results.mkdir(parents=True, exist_ok=True)
    (results / "world-place-toy.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Can the world model learn where? (bench/world_place_toy.py)",
        "",
        "E[x0 | prompt] from pure noise on placed prompts, one thread each; score: prompted cells among the "
        "cells with the most predicted object mass (place-blind ~0.33, clips ~0.70, ideal ~0.88).",
        "",
        "| arm | what | steps | clips | CPU-min | last | best | first >= 0.5 (clips) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in rows.items():
        last, above = r["last"], r["clips_to_0.5"]
        lines.append(
            f"| {arm} | {r['what']} | {last['step']} | {last['step'] * r['batch']} | {last['cpu_s'] / 60:.1f} "
            f"| {last['cells']:.2f} | {r['best']:.2f} | {above if above is not None else '-'} |"
        )
    (results / "world-place-toy.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="train one arm (restarts it)")
    go.add_argument("arm", choices=sorted(ARMS))
    go.add_argument("--cpu-minutes", type=float, default=15.0)
    go.add_argument("--eval-every", type=int, default=100)
    go.add_argument("--out", type=Path, default=Path("runs/place-toy"))
    tab = sub.add_parser("table", help="summarise the arms' logs")
    tab.add_argument("--root", type=Path, default=Path("runs/place-toy"))
    tab.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.command == "table":
        table(args.root, args.out)
        return
    torch.set_num_threads(1)
    run(args.arm, args.cpu_minutes, args.out, args.eval_every)


if __name__ == "__main__":
    main()
