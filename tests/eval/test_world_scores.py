"""Ground-truth scores on rendered world videos: right for the scene's own prompt, wrong where the
video or the prompt is altered in one known way."""

import dataclasses

import numpy as np
import pytest

from reward_forcing.eval import world_scores
from reward_forcing.world import (
    BACKGROUNDS,
    COLOURS,
    LEAD_SECONDS,
    PLACES,
    PromptSpec,
    render,
    sample_scene,
    with_places,
)


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(21)
    return [sample_scene(rng) for _ in range(24)]


def test_rendered_videos_score_right_against_their_own_prompt(scenes):
    for scene in scenes:
        video, truth = render(scene, 48)
        s = world_scores(video, scene.prompt, fps=scene.fps)
        visible = truth.visible.mean()  # the scorer cannot see an object hidden behind another
        assert s["found"] >= min(0.95, visible) - 0.02 and s["colour_right"] >= min(0.85, visible - 0.02)
        assert s["shape_right"] >= visible - 0.1, scene.prompt
        lead = int(LEAD_SECONDS * scene.fps) + 1
        assert s["direction_right"] == 1.0 or not truth.visible[:lead].all(), scene.prompt
        assert s["background_right"] == 1.0, scene.prompt
        assert s["keeps_moving"] >= 0.6, scene.prompt
        assert world_scores(video, scene.spec, fps=scene.fps)["adherence"] == s["adherence"]


def test_time_reversed_video_has_the_wrong_direction(scenes):
    lead = int(LEAD_SECONDS * 16) + 1  # no bounce before this by construction: reversal = opposite
    for scene in scenes:
        video, truth = render(scene, lead)
        s = world_scores(video[::-1], scene.prompt)
        assert s["direction_right"] == 0.0, scene.prompt
        assert s["found"] >= truth.visible.mean() - 0.02  # an object may be hidden by another


def test_shape_score_tells_the_three_shapes_apart():
    """A circle and a square of equal area overlap with IoU 0.83: the score must still tell them
    apart (the best-fitting shape must be the prompted one)."""
    for shape in ("circle", "square", "triangle"):
        for size in ("small", "large"):
            prompt = f"a {size} red {shape} moving to the right on a black background"
            video = render(
                sample_scene(0, n_objects=1).__class__(
                    (
                        dataclasses.replace(
                            sample_scene(0, n_objects=1).objects[0],
                            shape=shape,
                            colour="red",
                            size=size,
                            direction="right",
                        ),
                    ),
                    "black",
                    ((0.4, 0.5),),
                    prompt,
                ),
                16,
            )[0]
            assert world_scores(video, prompt)["shape_right"] == 1.0, prompt
            for other in {"circle", "square", "triangle"} - {shape}:
                wrong = prompt.replace(shape, other)
                assert world_scores(video, wrong)["shape_right"] == 0.0, wrong


def test_wrong_colour_and_background_in_the_prompt(scenes):
    scene = next(s for s in scenes if len(s.objects) == 1)
    video, _ = render(scene, 24)
    obj = scene.objects[0]
    other = next(c for c in COLOURS if c != obj.colour)
    bg = next(b for b in BACKGROUNDS if b != scene.background)
    s = world_scores(video, PromptSpec((dataclasses.replace(obj, colour=other),), bg))
    assert s["found"] == 1.0  # something is there, in the wrong colour
    assert s["colour_right"] == 0.0 and s["direction_right"] == 0.0 and s["background_right"] == 0.0


def test_empty_video_finds_nothing(scenes):
    scene = scenes[0]
    video = np.broadcast_to(np.array(BACKGROUNDS[scene.background], np.uint8), (24, 64, 64, 3))
    s = world_scores(video, scene.prompt)
    assert s["found"] == s["colour_right"] == s["direction_right"] == s["keeps_moving"] == 0.0
    assert s["adherence"] == 0.0 and s["background_right"] == 1.0


def test_freezing_after_half_stops_keeps_moving(scenes):
    for scene in scenes[:8]:
        video, _ = render(scene, 48)
        frozen = video.copy()
        frozen[24:] = video[24]
        s = world_scores(frozen, scene.prompt)
        assert s["keeps_moving"] == 0.0 and s["direction_right"] == 1.0, scene.prompt


def test_noise_is_not_an_object(scenes):
    """Random colour noise contains pixels of every colour, but no object-sized blob."""
    scene = scenes[0]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, scene.height, scene.width, 3), dtype=np.uint8)
    noise[:, 0], noise[:, -1], noise[:, :, 0], noise[:, :, -1] = 0, 0, 0, 0  # a black border
    s = world_scores(noise, scene.prompt)
    assert s["found"] < 0.2 and s["colour_right"] < 0.2 and s["adherence"] < 0.2, s
    flooded = np.zeros_like(noise)
    flooded[:, 4:-4, 4:-4] = COLOURS[scene.objects[0].colour]  # one colour over the whole frame
    assert world_scores(flooded, scene.prompt)["objects"][0]["colour_right"] == 0.0


def test_place_is_scored_only_where_the_prompt_states_it(scenes):
    """1 for the scene's own start cells, 0 for a cell elsewhere, absent without places."""
    for i, scene in enumerate(scenes[:12]):
        placed = with_places(scene, i)
        video, truth = render(placed, 12)
        assert "place_right" not in world_scores(video, scene.prompt)
        if not truth.visible[0].all():
            continue
        assert world_scores(video, placed.prompt)["place_right"] == 1.0, placed.prompt
        far = [
            dataclasses.replace(
                o, place=next(p for p, at in PLACES.items() if at == tuple(2 - a for a in PLACES[o.place]))
            )
            for o in placed.objects
        ]
        moved = [o for o, f in zip(placed.objects, far) if o.place != f.place]
        wrong = world_scores(video, PromptSpec(tuple(far), scene.background))["place_right"]
        assert wrong == 1 - len(moved) / len(far), placed.prompt
