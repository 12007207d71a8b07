"""world.layout: each placed object's words on the tokens of its 3x3 cell; the text encoder wrapper a
layout model (WanConfig.layout) takes its context from."""

import dataclasses

import numpy as np
import pytest
import torch

from reward_forcing.models.text_encoder import HashedTextEncoder
from reward_forcing.world import (
    COLOURS,
    LAYOUT_FEATURES,
    PLACES,
    LayoutTextEncoder,
    ObjectSpec,
    PromptSpec,
    describe,
    fill_places,
    layout_states,
    parse_prompt,
    render,
    sample_scene,
    sketch_states,
    with_places,
)

RED = ObjectSpec("triangle", "red", "large", "up-left", "fast", place="bottom-right")
BLUE = ObjectSpec("circle", "blue", "small", "right", "slow", place="top-left")


def test_a_placed_object_covers_its_cell_with_its_words():
    states = layout_states(PromptSpec((RED,), "black"), 8, 8).reshape(8, 8, LAYOUT_FEATURES)
    presence = states[..., 0]
    # a cell is 8/3 tokens wide: two tokens inside, the third two-thirds in
    np.testing.assert_allclose(presence[:, 5], [0, 0, 0, 0, 0, 4 / 9, 2 / 3, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(presence[6:, 6:], 1.0)
    assert presence[:5].max() == 0 and presence[:, :5].max() == 0
    np.testing.assert_allclose(presence.sum(), 64 / 9, rtol=1e-6)  # a ninth of the frame
    # the words, as one-hots scaled like the presence: colour, shape, size, direction, speed
    words = states[7, 7, 1:]
    assert words.sum() == 5
    assert words[list(COLOURS).index("red")] == 1
    np.testing.assert_allclose(states[..., 1:].sum(-1), 5 * presence, atol=1e-6)


def test_objects_in_other_cells_do_not_mix_and_unplaced_objects_are_absent():
    both = layout_states(PromptSpec((RED, BLUE), "white"), 8, 8).reshape(8, 8, LAYOUT_FEATURES)
    np.testing.assert_allclose(both[:2, :2, 0], 1.0)
    assert both[0, 0, 1 + list(COLOURS).index("blue")] == 1 and both[0, 0, 1 + list(COLOURS).index("red")] == 0
    unplaced = PromptSpec((ObjectSpec("circle", "blue"), RED), "white")
    only_red = layout_states(unplaced, 8, 8)
    np.testing.assert_allclose(only_red, layout_states(PromptSpec((RED,), "white"), 8, 8))
    # each of the nine places covers its own ninth
    cover = sum(layout_states(PromptSpec((ObjectSpec("circle", "red", place=p),), "black"), 6, 9)[:, 0] for p in PLACES)
    np.testing.assert_allclose(cover, 1.0, atol=1e-6)


def test_layout_text_encoder_appends_the_layout_after_the_text():
    text = HashedTextEncoder(64, 40)
    encoder = LayoutTextEncoder(text, 8, 8)
    prompt = describe(PromptSpec((RED, BLUE), "gray"), 0)
    assert parse_prompt(prompt).objects[0].place == "bottom-right"
    out = encoder([prompt, "static, blurry, low quality"])
    assert out.shape == (2, 40 + 64, 64)
    torch.testing.assert_close(out[:, :40], text([prompt, "static, blurry, low quality"]))
    want = torch.from_numpy(layout_states(parse_prompt(prompt), 8, 8))
    torch.testing.assert_close(out[0, 40:, :LAYOUT_FEATURES], want)
    assert out[0, 40:, LAYOUT_FEATURES:].abs().max() == 0
    assert out[1, 40:].abs().max() == 0  # not a world prompt: no layout
    with pytest.raises(ValueError, match="cannot hold"):
        LayoutTextEncoder(HashedTextEncoder(16, 40), 8, 8)([prompt])
    with pytest.raises(ValueError, match="at least 1x1"):
        LayoutTextEncoder(text, 0, 8)


def test_a_sketch_draws_the_first_frame_of_the_snapped_scene_without_its_colours():
    """sketch_states: the pixels' coverage is the rendered first frame's object mask of the scene the
    prompt fixes (with_places(snap=True)); each token's words are weighted by the share of it the
    object covers and leaves visible; the encoder appends them after the text when asked to."""
    for i in range(20):
        scene = with_places(sample_scene(i), i, snap=True)
        _, truth = render(scene, 1)
        states = sketch_states(scene.spec, 8, 8, 8)
        assert states.shape == (64, LAYOUT_FEATURES + 64)
        mask = states[:, LAYOUT_FEATURES:].reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)
        np.testing.assert_allclose(mask, truth.mask[0], atol=1e-5)
        token_cover = truth.mask[0].reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1)
        np.testing.assert_allclose(states[:, 0], token_cover, atol=1e-5)  # objects' visible shares add up
        np.testing.assert_allclose(states[:, 1:LAYOUT_FEATURES].sum(-1), 5 * states[:, 0], atol=1e-5)
    alone = sketch_states(PromptSpec((dataclasses.replace(BLUE, place=None),), "white"), 8, 8, 8)
    assert alone.max() == 0  # an unplaced object is not drawn
    text = HashedTextEncoder(96, 40)
    prompt = describe(PromptSpec((RED, BLUE), "gray"), 0)
    out = LayoutTextEncoder(text, 8, 8, sketch_pixels=8)([prompt])
    torch.testing.assert_close(
        out[0, 40:, : LAYOUT_FEATURES + 64], torch.from_numpy(sketch_states(parse_prompt(prompt), 8, 8, 8))
    )
    with pytest.raises(ValueError, match="cannot hold"):
        LayoutTextEncoder(HashedTextEncoder(64, 40), 8, 8, sketch_pixels=8)([prompt])
    with pytest.raises(ValueError, match="sketch_pixels"):
        LayoutTextEncoder(text, 8, 8, sketch_pixels=-1)


def test_fill_places_starts_unplaced_objects_where_they_have_room_in_free_cells():
    right = ObjectSpec("circle", "red", direction="right")
    also_right = ObjectSpec("square", "blue", direction="right")
    up = ObjectSpec("circle", "green", direction="up-left", place="centre")
    filled = fill_places(PromptSpec((right, also_right, up), "black"))
    assert [o.place for o in filled.objects] == ["left", "top-left", "centre"]  # nearest free cell, then kept
    assert filled.objects[0] == dataclasses.replace(right, place="left")
    # the encoder that streams a layout model rewords an unplaced prompt; training's leaves it alone
    prompt = describe(PromptSpec((right,), "gray"), 0)
    seen = []
    encoder = LayoutTextEncoder(lambda ps: seen.extend(ps) or torch.zeros(len(ps), 40, 64), 8, 8, place_unplaced=True)
    layout = encoder([prompt])[0, 40:, 0].reshape(8, 8)
    assert parse_prompt(seen[0]).objects[0].place == "left" and layout[3:5, 0].min() == 1
    seen.clear()
    assert LayoutTextEncoder(encoder.encoder, 8, 8)([prompt])[0, 40:].abs().max() == 0 and seen == [prompt]
