"""Teacher designs for the embedded world model, side by side at equal *process CPU-seconds* (one
thread each, the same data stream), scored by object-pixel x0 error per noise level and an 8-step
CFG sample probe on the gate's prompts (docs/design.md §10).

    python bench/world_ablation.py run ARM --cpu-minutes 45      # one arm, resumable
    python bench/world_ablation.py table                          # bench/results/world-ablation.{json,md}

An arm's run folder (``runs/ablation/ARM``) holds its checkpoints and ``ablation.jsonl`` (one row
per evaluation: CPU-seconds so far, step, errors); running an arm again continues it. Kill rule
(:func:`_kill_rule`): an arm whose object error after its first 45 CPU-minutes is the worst of its
round at noise 0.8 and at 0.95, by more than the evaluations' own noise, is marked stopped. The
table shows each arm at 45 CPU-minutes and at its last sample probe.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import MiniLMTextEncoder
from reward_forcing.models.wan_config import WanConfig
from reward_forcing.train.config import TrainConfig
from reward_forcing.train.run import load_model
from reward_forcing.train.teacher import TeacherTrainer
from reward_forcing.train.checkpoints import latest_checkpoint
from reward_forcing.train.world_data import WorldClips
from reward_forcing.world import LayoutTextEncoder
from reward_forcing.train.world_probe import (
    SIGMAS,
    colour_binding,
    direction_binding,
    gate_prompts,
    sample_videos,
    score_videos,
    summarize,
    x0_errors,
)

ROOT = Path(__file__).resolve().parent.parent
COMMITTED_TEACHER = ROOT / "training" / "world-teacher" / "ema.safetensors"
BASE = dict(
    teacher="world",
    text_encoder="minilm",
    vae="pixel",
    data="world",
    latent_frames=8,
    latent_height=16,
    latent_width=16,
    chunk_frames=2,
    shift=1.0,
    loss_space="x0",
    cond_dropout=0.1,
    lr_generator=3e-4,
    betas=(0.9, 0.99),
    weight_decay=0.0,
    batch_size=8,
    cpu_bf16=False,
    grad_accum=1,
    grad_clip=1.0,
    ema_decay=0.995,
    ema_start=100,
    max_steps=10**7,
    save_every=10**7,
    keep_checkpoints=1,
    log_every=10**7,
)
SHIFT3 = {"object_weight": 20.0, "object_weight_until": 0.7, "shift": 3.0}  # configs/world-teacher.yaml's loss
V3_COSINE = {
    "init": str(COMMITTED_TEACHER),
    **SHIFT3,
    "warmup_steps": 50,
    "lr_decay_steps": 800,
    "lr_floor": 0.1,
    "ema_start": 0,
}
# round 9: 2-latent-frame clips from frame 0, absolute position, prompts stating where objects start
V9 = {
    **V3_COSINE,
    "latent_frames": 2,
    "lr_decay_steps": 4000,
    "start_at_zero": 1.0,
    "absolute_position": True,
    "places": 1.0,
    "text_len": 48,
}
# rounds 12-17: from the committed layout teacher (v11-layout8-from2), placed clips snapped to one start
# per cell (world.placed_start); 8 latent frames, or 2 from frame 0; a layout drawn there (layout_sketch)
V12 = {**V3_COSINE, "places": 1.0, "snap_places": True}
V12_2 = {**V12, "latent_frames": 2, "start_at_zero": 1.0, "lr_decay_steps": 4000}
SKETCH = {"layout_sketch": 8}
FROM_SKETCH2 = {"init": str(ROOT / "runs" / "init" / "v14-sketch2-30min.safetensors")}
# name -> (what it tests, TrainConfig overrides); "init" starts from a weights file. COMMITTED_TEACHER
# is the file as it is when an arm runs: round 1 ran from the 17,385-step teacher, round 2 (v2-*)
# from the 19,039-step one, rounds 3 and 4 (v3-*, v4-*) from the 20,202-step one; rerunning an arm
# today starts from today's committed teacher.
ARMS = {
    "committed": (
        "the CPU teacher committed before the ablation (17,385 steps) as it was (--cpu-minutes 0: the reference row)",
        {"init": str(COMMITTED_TEACHER)},
    ),
    "baseline": ("today's design (WAN_WORLD, 8-px tokens, linear head, plain x0 loss, uniform noise levels)", {}),
    "continued": (
        "the committed CPU teacher (17,385 steps) continued with the object-weighted loss (1 + 20 x mask)",
        {"init": str(COMMITTED_TEACHER), "object_weight": 20.0},
    ),
    "continued-decayed": (
        "the committed CPU teacher continued with the object weight (1 + 20 x mask) "
        "falling linearly to 0 between noise 0.7 and 1, where a mask-dependent "
        "weight biases the optimum most",
        {"init": str(COMMITTED_TEACHER), "object_weight": 20.0, "object_weight_until": 0.7},
    ),
    "continued-mlp": (
        "the committed CPU teacher with its linear token head grown into a GELU head (1024 hidden, "
        "initialised to compute the same function: GELU(z) - GELU(-z) = z) and the object-weighted loss "
        "(1 + 20 x mask): the continued arm with a head that can draw sharp edges",
        {"init": str(COMMITTED_TEACHER), "grow_head": 1024, "object_weight": 20.0},
    ),
    "mlp-weighted": (
        "GELU token head (1024) + object-weighted loss (1 + 10 x mask) + noise levels shifted to high noise (shift 3)",
        {"teacher": "world-mlp", "object_weight": 10.0, "shift": 3.0},
    ),
    "v2-decayed": (
        "control for the second round: the teacher committed after the first round (the continued-decayed arm "
        "at 80 CPU-min, 19,039 steps) continued with the same loss (configs/world-teacher.yaml)",
        {"init": str(COMMITTED_TEACHER), "object_weight": 20.0, "object_weight_until": 0.7},
    ),
    "v2-overfit": (
        "diagnostic: the teacher committed after the first round trained on 16 fixed clips with its own loss "
        "(scored on their prompts: can this model, sampler and conditioning reach the gate at all?)",
        {"init": str(COMMITTED_TEACHER), "object_weight": 20.0, "object_weight_until": 0.7, "fixed_clips": 16},
    ),
    "v2-motion": (
        "v2-decayed plus 5 x the squared error of the x0 prediction's frame-to-frame differences "
        "(motion_weight: same optimum, objects that jump between frames cost more)",
        {"init": str(COMMITTED_TEACHER), "object_weight": 20.0, "object_weight_until": 0.7, "motion_weight": 5.0},
    ),
    "v2-shift3": (
        "v2-decayed with noise levels drawn shifted to high noise (shift 3: 43 % above 0.8, was 20 %), "
        "where a sample decides where its objects are and how they move",
        {"init": str(COMMITTED_TEACHER), "object_weight": 20.0, "object_weight_until": 0.7, "shift": 3.0},
    ),
    "v3-constant": (
        "control for the third round: the teacher committed after the second round (v2-shift3 at 65 CPU-min, "
        "20,202 steps) continued with configs/world-teacher.yaml as it was then: constant learning rate, "
        "EMA from step 100",
        {"init": str(COMMITTED_TEACHER), **SHIFT3},
    ),
    "v3-cosine": (
        "v3-constant with a restart that keeps its ground: learning rate warmed up over 50 steps, then "
        "cosine-decayed to 0.1x by step 800 (~45 CPU-min), and the EMA averaging from step 0",
        V3_COSINE,
    ),
    "v4-batch32": (
        "v3-cosine at batch 32 (4x the clips per step, learning rate 6e-4: square-root scaling), warm-up over "
        "25 steps, cosine to 0.1x by step 200 (~45 CPU-min): less gradient noise where the x0 error is mostly "
        "the irreducible spread of the layout (high noise)",
        {**V3_COSINE, "batch_size": 32, "lr_generator": 6e-4, "warmup_steps": 25, "lr_decay_steps": 200},
    ),
    "v4-shift6": (
        "v3-cosine with noise levels drawn with shift 6 (60 % above 0.8, shift 3: 43 %): still more of the "
        "budget on the layout phase",
        {**V3_COSINE, "shift": 6.0},
    ),
    "v5-causal1": (
        "v3-cosine trained block-causal over single latent frames, diffusion-forcing style (a clean prefix of "
        "frames, then an independent noise level per frame) and sampled frame by frame: each latent frame "
        "continues the trajectories it sees clean in its context instead of placing its objects on its own",
        {**V3_COSINE, "teacher_chunk_frames": 1},
    ),
    "v5-causal2": (
        "v5-causal1 over chunks of 2 latent frames (the student's chunk)",
        {**V3_COSINE, "teacher_chunk_frames": 2},
    ),
    "v6-pooled": (
        "v3-cosine with the prompt's pooled text states (mean over its tokens, through a zero-initialised "
        "2-layer MLP) added to the time embedding (WanConfig.text_pooled): every block's modulation sees "
        "colour, size, shape and direction at once, where cross-attention binds them weakly",
        {**V3_COSINE, "text_pooled": True},
    ),
    "v6-weight5": (
        "v3-cosine with object weight 5 instead of 20: a pixel weight that depends on the clean clip moves the "
        "x0 optimum towards object colour (objects that swell, blobs instead of shapes); a quarter of the bias",
        {**V3_COSINE, "object_weight": 5.0},
    ),
    "v7-committed2": (
        "reference row for the seventh round: the committed teacher (20,202 steps) as it is, scored on clips "
        "of 2 latent frames (0.5 s: the student's first chunk, where the direction is measured)",
        {"init": str(COMMITTED_TEACHER), "latent_frames": 2},
    ),
    "v7-short2": (
        "v3-cosine trained on clips of 2 latent frames (0.5 s) instead of 8: a step costs a fraction, so the "
        "first chunk - what the samples get wrong, drawn from the prompt alone - sees several times the clips "
        "per CPU-minute; cosine to 0.1x by step 4,000",
        {**V3_COSINE, "latent_frames": 2, "lr_decay_steps": 4000},
    ),
    "v7-short2-plain": (
        "v7-short2 with the plain x0 loss (no object weight): a weight that depends on the clean clip moves "
        "the optimum towards object colour at object edges, i.e. blobs that swell instead of shapes",
        {**V3_COSINE, "latent_frames": 2, "lr_decay_steps": 4000, "object_weight": 0.0},
    ),
    "v7-short2-start0": (
        "v7-short2 with every clip starting at frame 0: half of the clips started at a random frame (after "
        "bounces), where the motion shown is not the prompted direction (a diagonal one in a quarter of "
        "them), so the prompt's direction was a weak label for a teacher that draws a clip from the prompt alone",
        {**V3_COSINE, "latent_frames": 2, "lr_decay_steps": 4000, "start_at_zero": 1.0},
    ),
    "v8-position2": (
        "v7-short2-start0 with each token's place in the frame added to its embedding (WanConfig."
        "absolute_position, zero-initialised): RoPE gives relative positions only, so from pure noise the "
        "model cannot put an object where its prompt implies (a world object moving right starts on the "
        "left) - at noise 1 its mean prediction moved 0.3 grey levels between 'right' and 'left' prompts, "
        "the clips' mean 15",
        {**V3_COSINE, "latent_frames": 2, "lr_decay_steps": 4000, "start_at_zero": 1.0, "absolute_position": True},
    ),
    "v8-position8": (
        "v3-cosine (8 latent frames, the teacher's clips) with the absolute position of v8-position2",
        {**V3_COSINE, "absolute_position": True},
    ),
    "v9-places2": (
        "v8-position2 with half of the prompts also saying where each object starts ('a red ball on the left "
        "moving right', world.with_places): without a place, where the object is is most of what a sample "
        "from noise must guess and the direction a few per cent of the loss; probed on the gate prompts "
        "without and with places. Prompts padded to 48 tokens, not 32 (a fifth of them are longer than 32 "
        "with places). Stopped by hand after 20 CPU-minutes to free its core for v9-places2-posinit",
        {**V9, "places": 0.5},
    ),
    "v9-places2-all": (
        "v9-places2 with every prompt saying where its objects start",
        V9,
    ),
    "v9-places2-posinit": (
        "v9-places2-all with the position embedding drawn at random (std 0.1: a place signal of norm ~5 per "
        "token, against ~18 for a token of pure noise) instead of zeros: grown from zeros it stayed below "
        "norm 1 for thousands of steps and no arm put objects at the prompted place (v9-places2-all: place "
        "right 0.06 after 1,000 steps)",
        {**V9, "position_init_std": 0.1},
    ),
    "v9-places2-high": (
        "diagnostic: v9-places2-posinit trained only near noise 1 (shift 100: 90 % of noise levels above "
        "0.92), where the prompt is all there is to place an object by: can it learn place at all?",
        {**V9, "position_init_std": 0.1, "shift": 100.0},
    ),
    "v10-layout2": (
        "v9-places2-all with a layout (WanConfig.layout, zero-initialised): each placed object's words on the "
        "tokens of its 3x3 cell, added to the first latent frame (world.LayoutTextEncoder). In the place toy "
        "(bench/world_place_toy.py) every arm that had to read the place from the text stayed place-blind for "
        "28,000 clips",
        {**V9, "layout": True},
    ),
    "v10-layout8": (
        "v8-position8 (8 latent frames, half the clips from frame 0) with the layout of v10-layout2 on the clips "
        "from frame 0, whose prompts all say where their objects start. Stopped by hand after 30 CPU-minutes "
        "(place right 0.06 at 25) to free its core for v11-layout8-from2",
        {**V3_COSINE, "absolute_position": True, "places": 1.0, "text_len": 48, "layout": True},
    ),
    "v11-layout8-from2": (
        "the layout learnt on cheap 2-latent-frame clips first (v10-layout2 after 35 CPU-minutes, step 3,361, "
        "exported to runs/init/v10-layout2-35min.safetensors), then the teacher's clips (v10-layout8's data): "
        "at 8 latent frames v10-layout8 placed objects no better than chance after 25 CPU-minutes (place "
        "right 0.06), v10-layout2 0.38 after 20",
        {**V3_COSINE, "init": str(ROOT / "runs" / "init" / "v10-layout2-35min.safetensors"), "places": 1.0},
    ),
    "v12-snap2": (
        "the committed layout teacher (v11-layout8-from2 at 60 CPU-minutes) on 2-latent-frame clips from frame 0 "
        "whose placed objects start at their cell's one start (world.placed_start): given a 3x3 cell, the x0 of "
        "pure noise is the mean over the cell's starts, a blob the sampler keeps (shape right 0.17); snapped, "
        "the prompt fixes the clip's first frames",
        V12_2,
    ),
    "v12-snap8": (
        "v12-snap2 on the teacher's clips (8 latent frames, half from frame 0, those placed and snapped). "
        "Stopped by hand after 33 CPU-minutes to free its core for v14-sketch2",
        V12,
    ),
    "v14-sketch2": (
        "v12-snap2 with the layout drawn (world.sketch_states): each token's word one-hots weighted by the share "
        "of it each object covers where it starts, and its 8x8 pixels' object coverage - the first frame's "
        "geometry without its colours. v12-snap2 kept shape right at 0.15-0.19 for 20 CPU-minutes: from a cell "
        "and words the model does not learn to draw a shape's edges",
        {**V12_2, **SKETCH},
    ),
    "v14-sketch8": (
        "v14-sketch2 on the teacher's clips (8 latent frames, half from frame 0, those placed, snapped, sketched). "
        "Stopped by hand after 25 CPU-minutes to free its core for v16-sketch2-weighted",
        {**V12, **SKETCH},
    ),
    "v15-sketch8-from2": (
        "v14-sketch2 after 30 CPU-minutes (exported to runs/init/v14-sketch2-30min.safetensors), then v14-sketch8's "
        "clips: the recipe of v11-layout8-from2 with the drawn layout",
        {**V12, **SKETCH, **FROM_SKETCH2},
    ),
    "v16-sketch2-weighted": (
        "v14-sketch2 after 30 CPU-minutes (runs/init/v14-sketch2-30min.safetensors) continued with the object "
        "weight (1 + 20 x mask) kept up to noise 1: it fell to 1x above 0.7 because a weight that depends on "
        "the clean clip biases the optimum where the clip is uncertain given the input, but a snapped clip "
        "from frame 0 is fixed by its prompt and layout (v14-sketch2's x0 from pure noise still missed most "
        "object pixels after 30 CPU-minutes). Stopped by hand after 12 CPU-minutes: colour right 0.55 and still "
        "moving 0.06 at 10 (v14-sketch2 at 30: 0.95 and 0.75)",
        {**V12_2, **SKETCH, **FROM_SKETCH2, "object_weight_until": 1.0},
    ),
    "v17-sketch2-high": (
        "diagnostic: v14-sketch2 after 30 CPU-minutes trained only near noise 1 (shift 100: 90 % of noise levels "
        "above 0.92), where the layout and the words are all there is to draw from: its x0 from pure noise "
        "missed most object pixels (error 0.47 at noise 1, 0.14 at 0.95) - can it learn to draw there at all?",
        {**V12_2, **SKETCH, **FROM_SKETCH2, "shift": 100.0},
    ),
    "overfit": (
        "diagnostic: today's design on 16 fixed clips (must reach the gate on their prompts)",
        {"fixed_clips": 16},
    ),
}
HELD_SEED, PROBE_SEEDS = 12345, (0, 1)


@torch.no_grad()
def grow_head(model: CausalWanModel, hidden: int) -> CausalWanModel:
    """``model`` (a linear token head ``W x + b``) as a model with a GELU head of ``hidden`` units that
    computes the same function: units ``[x; -x]`` into ``[W, -W]`` (GELU(z) - GELU(-z) = z, exactly,
    for the tanh form too), the other units random in and zero out, so they start learning at once."""
    linear = model.head.head
    if not isinstance(linear, torch.nn.Linear) or hidden < 2 * linear.in_features:
        raise ValueError(f"grow_head: needs a linear head and hidden >= {2 * linear.in_features}")
    torch.manual_seed(0)
    grown = CausalWanModel(dataclasses.replace(model.config, head_hidden=hidden)).to(model.dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.head.")}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.head.") for k in missing), (missing, unexpected)
    first, last = grown.head.head[0], grown.head.head[2]
    d = linear.in_features
    eye = torch.eye(d, dtype=first.weight.dtype)
    first.weight[: 2 * d] = torch.cat([eye, -eye])
    first.bias[: 2 * d] = 0
    last.weight.zero_()
    last.weight[:, : 2 * d] = torch.cat([linear.weight, -linear.weight], dim=1)
    last.bias.copy_(linear.bias)
    return grown


def extend(model: CausalWanModel, **options) -> CausalWanModel:
    """``model`` with zero-initialised config ``options`` switched on (``text_pooled``,
    ``absolute_position``, ``layout``): the same weights plus the new modules, computing the same function at first."""
    torch.manual_seed(0)
    extended = CausalWanModel(dataclasses.replace(model.config, **options)).to(model.dtype)
    missing, unexpected = extended.load_state_dict(model.state_dict(), strict=False)
    new = tuple(k for k in extended.state_dict() if k not in model.state_dict())
    assert not unexpected and sorted(missing) == sorted(new), (missing, unexpected)
    return extended


def _trainer(arm: str, out: Path) -> TeacherTrainer:
    overrides = dict(ARMS[arm][1])
    init, hidden = overrides.pop("init", None), overrides.pop("grow_head", 0)
    options = {
        k: overrides.pop(k)
        for k in ("text_pooled", "absolute_position", "layout", "layout_sketch", "text_len")
        if k in overrides
    }
    position_std = overrides.pop("position_init_std", 0.0)
    cfg = TrainConfig.from_dict({**BASE, **overrides, "out_dir": str(out)})
    model = load_model(init or cfg.teacher, "teacher", cfg.seed + 1, torch.device("cpu"))
    if hidden:
        model = grow_head(model, hidden)
    if options:
        model = extend(model, **options)
    if position_std:
        torch.nn.init.normal_(model.position_embedding.weight, std=position_std)
    data = WorldClips(
        PixelCodec(),
        cfg.latent_frames,
        start_at_zero=cfg.start_at_zero,
        places=cfg.places,
        snap_places=cfg.snap_places,
        fixed=cfg.fixed_clips,
        fixed_seed=cfg.seed,
    )
    return TeacherTrainer(cfg, model, _text_encoder(model.config), data)


@functools.cache
def _text_encoder(config: WanConfig):
    text = MiniLMTextEncoder.from_pretrained(text_len=config.text_len)
    if not config.layout:
        return text
    grid = config.token_grid(BASE["latent_height"], BASE["latent_width"])
    return LayoutTextEncoder(text, *grid, sketch_pixels=config.layout_sketch)


def _chunk_frames(arm: str) -> int | None:
    """The arm's block-causal chunk (None: a bidirectional teacher)."""
    return ARMS[arm][1].get("teacher_chunk_frames") or None


def _evaluate(trainer: TeacherTrainer, text, held, probe: bool) -> dict:
    ema, chunk = trainer.ema, trainer.cfg.teacher_chunk_frames or None
    row = {"x0": x0_errors(ema, text(held.prompts), held, chunk_frames=chunk)}
    if probe:
        frames = trainer.cfg.latent_frames
        sets = {"probe": held.prompts[:16] if trainer.cfg.fixed_clips else gate_prompts(16)}
        if trainer.cfg.places:  # also with the places its prompts learned to state
            sets["probe_placed"] = gate_prompts(16, places=True)
        for key, prompts in sets.items():
            videos = sample_videos(
                ema, text, PixelCodec(), prompts, PROBE_SEEDS, latent_frames=frames, chunk_frames=chunk
            )
            row[key] = summarize(score_videos(videos, prompts))
    return row


def run(arm: str, cpu_minutes: float, eval_minutes: float, probe_minutes: float, root: Path) -> None:
    torch.set_num_threads(1)
    out = root / arm
    trainer = _trainer(arm, out)
    text = trainer.text_encoder
    trainer.resume()
    log = out / "ablation.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    rows = [r for r in rows if r["step"] <= trainer.step]
    spent = rows[-1]["cpu_seconds"] if rows else 0.0
    if trainer.data.fixed_pool is not None:  # the overfit arm is scored on its own clips and prompts
        held = trainer.data.fixed_pool
    else:
        # the same 16 scenes for every arm, rendered at the arm's clip length (the first frames of each)
        held = WorldClips(PixelCodec(), trainer.cfg.latent_frames, start_at_zero=1.0).sample(
            16, np.random.default_rng(HELD_SEED)
        )
    budget, next_eval = 60 * cpu_minutes, spent + 60 * eval_minutes
    next_probe = (spent // (60 * probe_minutes) + 1) * 60 * probe_minutes
    start = time.process_time() - spent
    from tqdm import tqdm

    bar = tqdm(total=int(budget), initial=int(spent), unit="cpu-s", desc=arm)
    while True:
        now = time.process_time() - start
        done = now >= budget
        if now >= next_eval or done:
            eval_start = time.process_time()
            probe = done or now >= next_probe
            row = {"arm": arm, "cpu_seconds": now, "step": trainer.step, **_evaluate(trainer, text, held, probe)}
            start += time.process_time() - eval_start  # evaluation time is not training time
            rows.append(row)
            out.mkdir(parents=True, exist_ok=True)
            tmp = log.with_name(log.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, log)
            trainer.save_checkpoint()
            next_eval += 60 * eval_minutes
            while next_probe <= now:
                next_probe += 60 * probe_minutes
            tqdm.write(json.dumps({k: row[k] for k in ("cpu_seconds", "step")} | {"x0": row["x0"]}))
        if done:
            break
        logs = trainer.train_step()
        bar.update(int(time.process_time() - start) - bar.n)
        bar.set_postfix(step=trainer.step, loss=f"{logs['loss']:.4f}")
    bar.close()


DIAGNOSTICS = (
    "committed",
    "overfit",
    "v2-overfit",
    "v9-places2-high",
    "v17-sketch2-high",
)  # not subject to the kill rule


def _round(arm: str) -> tuple[int, int]:
    """Arms named ``vN-*`` form round N (a round's arms start from the same teacher), the others round 1;
    the kill rule compares arms of one round and clip length (their x0 errors are on the same held clips)."""
    match = re.match(r"v(\d+)-", arm)
    return int(match.group(1)) if match else 1, ARMS[arm][1].get("latent_frames", BASE["latent_frames"])


def _row_at(rows: list[dict], cpu_seconds: float) -> dict:
    return min(rows, key=lambda r: abs(r["cpu_seconds"] - cpu_seconds))


def _kill_rule(rows: dict[str, list[dict]], at45: dict[str, dict]) -> set[str]:
    """The arm whose object x0 error at 45 CPU-minutes is the worst of its round at both 0.8 and 0.95,
    each time ahead of the next worst by more than the measurement's noise (the largest change between
    successive evaluations of any compared arm over its last 15 CPU-minutes); none if no arm is."""

    def noise(sigma: str) -> float:
        steps = [0.0]
        for arm_rows in rows.values():
            values = [r["x0"][sigma]["object"] for r in arm_rows if 1800 <= r["cpu_seconds"] <= 2760]
            steps += [abs(a - b) for a, b in zip(values, values[1:])]
        return max(steps)

    worst = set()
    for sigma in ("0.8", "0.95"):
        ranked = sorted(rows, key=lambda a: at45[a]["x0"][sigma]["object"], reverse=True)
        gap = at45[ranked[0]]["x0"][sigma]["object"] - at45[ranked[1]]["x0"][sigma]["object"]
        worst.add(ranked[0] if gap > noise(sigma) else None)
    return worst - {None} if len(worst) == 1 else set()


def table(root: Path, results: Path) -> None:
    """The table of every arm run under ``root``; arms in an earlier ``world-ablation.json`` that
    did not run under ``root`` keep their rows (the table grows over sessions)."""
    saved = results / "world-ablation.json"
    earlier = json.loads(saved.read_text())["arms"] if saved.is_file() else {}
    arms = {}
    for arm in ARMS:
        log = root / arm / "ablation.jsonl"
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines()]
            ckpt = latest_checkpoint(root / arm)  # bindings of its newest checkpoint (EMA weights)
            model = load_causal_wan(ckpt, dtype=torch.float32).eval() if ckpt is not None else None
            sketch = ARMS[arm][1].get("layout_sketch", 0)
            if model is not None and sketch != model.config.layout_sketch:  # run before the config recorded it
                model = extend(model, layout_sketch=sketch).eval()
            arms[arm] = {"what": ARMS[arm][0], "rows": rows}
            if model is not None:
                chunk, text = _chunk_frames(arm), _text_encoder(model.config)
                arms[arm]["colour_binding"] = colour_binding(model, text, PixelCodec(), chunk_frames=chunk)
                arms[arm]["direction_binding"] = direction_binding(model, text, PixelCodec(), chunk_frames=chunk)
                if ARMS[arm][1].get("places"):
                    arms[arm]["direction_binding_placed"] = direction_binding(
                        model, text, PixelCodec(), chunk_frames=chunk, place="centre"
                    )
        elif arm in earlier:
            arms[arm] = earlier[arm]
    if not arms:
        raise SystemExit(f"no arm has run under {root} or in {saved}")
    at45 = {a: _row_at(v["rows"], 2700) for a, v in arms.items()}
    killed = set()
    for round_ in {_round(a) for a in arms}:  # the kill rule compares arms of one round and clip length
        compared = [a for a in arms if _round(a) == round_ and a not in DIAGNOSTICS and at45[a]["cpu_seconds"] > 0]
        if len(compared) > 1:
            killed |= _kill_rule({a: arms[a]["rows"] for a in compared}, at45)
    for a, v in arms.items():
        v["stopped_by_kill_rule"] = a in killed
    keys = ("found", "colour_right", "shape_right", "background_right", "direction_right", "keeps_moving")
    lines = [
        "| arm | CPU-min | steps | "
        + " | ".join(f"obj / bg x0 MSE @ {s}" for s in SIGMAS)
        + " | colour binding @ 0.95 | direction binding @ 0.9"
        + " | probe found / colour / shape / bg / direction / moving |",
        "|" + "---|" * (len(SIGMAS) + 6),
    ]
    for a, v in arms.items():
        probed = [r for r in v["rows"] if "probe" in r] or v["rows"][-1:]
        shown = [_row_at(probed, 2700)]  # equal time: the probe nearest 45 CPU-minutes, and the last one
        shown += [probed[-1]] if probed[-1]["cpu_seconds"] > shown[0]["cpu_seconds"] + 300 else []
        for row in shown:
            errs = " | ".join(
                f"{row['x0'][str(s)]['object']:.4f} / {row['x0'][str(s)]['background']:.4f}" for s in SIGMAS
            )
            probe = row.get("probe")
            p = " / ".join(f"{probe[k]['mean']:.2f}" for k in keys) if probe else "-"
            bind = " | ".join(
                f"{v[key]:.2f}" if v.get(key) is not None and row is shown[-1] else "-"
                for key in ("colour_binding", "direction_binding")
            )
            lines.append(
                f"| {a}{' (killed)' if a in killed else ''} | {row['cpu_seconds'] / 60:.0f} | "
                f"{row['step']} | {errs} | {bind} | {p} |"
            )
            placed = row.get("probe_placed")
            if placed:
                bound = v.get("direction_binding_placed")
                lines.append(
                    f"| {a}, gate prompts with places (place right {placed['place_right']['mean']:.2f}) | "
                    f"{row['cpu_seconds'] / 60:.0f} | {row['step']} | {' | '.join('-' * len(SIGMAS))} | - | "
                    f"{f'{bound:.2f}' if bound is not None and row is shown[-1] else '-'} | "
                    + " / ".join(f"{placed[k]['mean']:.2f}" for k in keys)
                    + " |"
                )
    results.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"arms": arms}, indent=1))
    md = results / "world-ablation.md"
    earlier_md = md.read_text() if md.is_file() else ""
    findings = earlier_md[earlier_md.index("\nFindings") :] if "\nFindings" in earlier_md else ""
    md.write_text(
        "Teacher designs at equal process CPU time (one thread each, 2-core AMD EPYC without AVX-512, float32); "
        "x0 errors on 16 held clips, probe: 8-step CFG samples of 16 gate prompts x 2 seeds.\n\n"
        + "\n".join(f"- **{a}**: {v['what']}" for a, v in arms.items())
        + "\n\n"
        + "\n".join(lines)
        + "\n"
        + findings  # the written findings below the table stay
    )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one arm for a CPU-time budget (continues a started arm)")
    r.add_argument("arm", choices=sorted(ARMS))
    r.add_argument("--cpu-minutes", type=float, default=45.0, help="total process CPU-minutes")
    r.add_argument("--eval-minutes", type=float, default=5.0, help="CPU-minutes between evaluations")
    r.add_argument("--probe-minutes", type=float, default=45.0, help="CPU-minutes between sample probes")
    t = sub.add_parser("table", help="the comparison table")
    t.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    for p in (r, t):
        p.add_argument("--root", type=Path, default=ROOT / "runs" / "ablation")
    args = parser.parse_args()
    if args.command == "run":
        run(args.arm, args.cpu_minutes, args.eval_minutes, args.probe_minutes, args.root)
    else:
        table(args.root, args.out)


if __name__ == "__main__":
    main()
