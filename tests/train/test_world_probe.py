"""The world teacher's probe: the x0 error split, the gate's prompts and intervals, and (on the
committed CPU-trained teacher) that the prompt reaches the cross-attention."""

from pathlib import Path

import numpy as np
import pytest
import torch

from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.train import dmd
from reward_forcing.train.world_data import WorldClips
from reward_forcing.train.world_probe import GATE, direction_binding, gate_prompts, summarize, x0_errors
from reward_forcing.world import (
    COLOURS,
    DIRECTIONS,
    MAX_OBJECTS,
    SHAPES,
    ObjectSpec,
    parse_prompt,
    scene_split,
    fill_places,
    start_place,
)

TEACHER = Path(__file__).resolve().parents[2] / "training" / "world-teacher" / "ema.safetensors"
CODEC = PixelCodec()


class _Oracle(torch.nn.Module):
    """Returns the velocity that recovers ``x0`` exactly, except ``error`` added on object pixels."""

    def __init__(self, x0, masks, error):
        super().__init__()
        self.x0, self.masks, self.error = x0, masks, error

    def forward(self, x_t, t, cond, chunk_frames=None):
        sigma = t / 1000
        x0 = self.x0 + self.error * self.masks
        return (x_t - x0) / sigma.view(-1, 1, 1, 1, 1)


def test_x0_errors_split_object_and_background_pixels():
    clips = WorldClips(CODEC, 2, start_at_zero=1.0).sample(3, np.random.default_rng(0))
    assert 0.02 < float(clips.masks.mean()) < 0.5  # objects cover a minority of the pixels
    errors = x0_errors(_Oracle(clips.latents, clips.masks, 0.5), None, clips)
    for sigma, e in errors.items():
        # squared error 0.25 on fully covered pixels, less on anti-aliased edges, which are
        # partly background too
        assert 0.15 < e["object"] < 0.25 and e["background"] < 0.01 * e["object"], sigma


class _DirectionText:
    """Encodes a world prompt as the index of its (first object's) direction."""

    def __call__(self, prompts):
        return torch.tensor([list(DIRECTIONS).index(parse_prompt(p).objects[0].direction) for p in prompts])


def _circle(direction: str, latent_frames: int) -> torch.Tensor:
    """The latents of a small red circle starting in the middle, moving in ``direction``."""
    from reward_forcing.world import Scene, render

    scene = Scene((ObjectSpec("circle", "red", "small", direction),), "black", ((0.5, 0.5),), "", 64, 64)
    return CODEC.encode(torch.from_numpy(render(scene, 4 * latent_frames)[0])[None])


class _Mover(torch.nn.Module):
    """Predicts the circle moving in the prompted direction (``follow``), or in the direction its
    input shows (the rendering nearest to ``x_t``): a model that reads motion off the clip only."""

    device = torch.device("cpu")

    def __init__(self, follow: bool):
        super().__init__()
        self.follow = follow

    def forward(self, x_t, t, cond, chunk_frames=None):
        sigma = (t / 1000).view(-1, 1, 1, 1, 1)
        clips = torch.cat([_circle(d, x_t.shape[2]) for d in DIRECTIONS])
        if not self.follow:
            cond = ((x_t[:, None] - (1 - sigma[:, None]) * clips[None]) ** 2).flatten(2).sum(-1).argmin(1)
        return (x_t - clips[cond]) / sigma


def test_direction_binding_tells_the_prompt_from_the_clip():
    """1 for a model that moves the object as the prompt says, chance (1/8) for one that reads the
    motion off the noised clip."""
    assert direction_binding(_Mover(follow=True), _DirectionText(), CODEC) == 1.0
    assert direction_binding(_Mover(follow=False), _DirectionText(), CODEC) == 1 / 8
    assert direction_binding(_Mover(follow=True), _DirectionText(), CODEC, place="centre") == 1.0


def test_object_weighted_loss_counts_object_pixels_more():
    x0, noise = torch.zeros(2, 4, 1, 2, 2), torch.zeros(2, 4, 1, 2, 2)
    v = torch.zeros_like(x0)
    v[:, :, :, 0, 0] = 1.0  # error on one of four pixels
    mask = torch.zeros_like(x0)
    mask[:, :, :, 0, 0] = 1.0
    plain = dmd.denoising_loss(v, noise, x0)
    weighted = dmd.denoising_loss(v, noise, x0, weight=1 + 20 * mask)
    assert torch.allclose(plain, torch.full((2,), 0.25)) and torch.allclose(weighted, 21 * plain)


def test_gate_prompts_cover_every_attribute_and_both_splits():
    prompts = gate_prompts(16)
    specs = [parse_prompt(p) for p in prompts]
    assert len(set(prompts)) == 16
    assert [scene_split(s) for s in specs[:8]] == ["test"] * 8
    assert [scene_split(s) for s in specs[8:]] == ["train"] * 8
    objects = [o for s in specs for o in s.objects]
    assert {o.colour for o in objects} == set(COLOURS) and {o.shape for o in objects} == set(SHAPES)
    assert {o.direction for o in objects} == set(DIRECTIONS)
    assert {s.background for s in specs} == {"black", "white", "gray"}
    assert {len(s.objects) for s in specs} == set(range(1, MAX_OBJECTS + 1))
    with pytest.raises(ValueError):
        gate_prompts(15)


def test_gate_prompts_with_places_start_each_object_where_it_has_room():
    """The same objects and backgrounds, each also placed where the default pipeline would place it
    (world.fill_places: its direction's start_place, or the nearest free cell): never two in one cell."""
    plain, placed = map(lambda p: [parse_prompt(x) for x in gate_prompts(16, places=p)], (False, True))
    shared = 0
    for a, b in zip(plain, placed):
        assert [o.place for o in a.objects] == [None] * len(a.objects)
        assert b == fill_places(a)
        assert b.objects[0].place == start_place(b.objects[0].direction)
        assert len({o.place for o in b.objects}) == len(b.objects)
        shared += len({start_place(o.direction) for o in a.objects}) < len(a.objects)
    assert shared  # a prompt whose objects head the same way: the second one moves to a free cell


def test_summarize_reports_intervals_and_the_gate():
    rows = [{k: 1.0 for k in GATE} for _ in range(8)]
    rows[0]["colour_right"] = 0.0
    s = summarize(rows)
    assert "place_right" not in s
    assert s["found"]["mean"] == 1.0 and s["found"]["ci95"] == [1.0, 1.0]
    lo, hi = s["colour_right"]["ci95"]
    assert s["colour_right"]["mean"] == 0.875 and lo < 0.875 < hi and not s["colour_right"]["passes"]
    assert not s["passes_gate"]
    placed = summarize([r | {"place_right": float(i % 2)} for i, r in enumerate(rows)])
    assert placed["place_right"]["mean"] == 0.5 and "gate" not in placed["place_right"]
    assert placed["passes_gate"] == s["passes_gate"]


@pytest.fixture(scope="module")
def teacher():
    if not TEACHER.is_file():
        pytest.skip(f"no committed world teacher at {TEACHER}")
    from reward_forcing.models.loading import load_causal_wan
    from reward_forcing.models.text_encoder import MiniLMTextEncoder

    model = load_causal_wan(TEACHER, dtype=torch.float32).eval()
    return model, MiniLMTextEncoder.from_pretrained(text_len=model.config.text_len)


def test_the_colour_word_reaches_the_teachers_cross_attention(teacher):
    """Diagnosis (docs/design.md §10): the conditioning path is not broken. Changing only the
    colour word changes the x0 prediction, and some block puts well over a uniform share of its
    cross-attention on the colour token."""
    model, text = teacher
    prompts = [f"a {c} circle moving to the right on a black background" for c in ("red", "blue")]
    colour_token = text.tokenizer(prompts[0])["input_ids"].index(text.tokenizer.convert_tokens_to_ids("red"))
    clips = WorldClips(CODEC, 8, start_at_zero=1.0).sample(1, np.random.default_rng(0))
    x_t = dmd.add_noise(
        clips.latents,
        torch.randn(clips.latents.shape, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0.95]),
    ).expand(2, -1, -1, -1, -1)
    queries = []
    hooks = [b.cross_attn.register_forward_pre_hook(lambda m, args: queries.append(args[0])) for b in model.blocks]
    try:
        with torch.no_grad():
            cond = text(prompts)
            if model.config.layout:  # an empty layout: the text path alone
                cond = torch.cat([cond, cond.new_zeros(len(prompts), 64, cond.shape[-1])], 1)
            x0 = dmd.predict_x0(x_t, model(x_t, torch.full((2,), 950.0), cond), torch.tensor([0.95, 0.95]))
            kv = model.encode_text(cond)
            mass = []
            for block, x, (k, _) in zip(model.blocks, queries, kv.kv):
                attn = block.cross_attn
                q = attn._heads(attn.norm_q(attn.q(x))).transpose(1, 2)
                weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
                mass.append(float(weights[0].mean((0, 1))[colour_token]))
    finally:
        for h in hooks:
            h.remove()
    assert float((x0[0] - x0[1]).abs().mean()) > 0.01
    uniform = 1 / model.config.text_len
    assert max(mass) > 2 * uniform, mass
