import dataclasses
import itertools

import numpy as np
import pytest

from reward_forcing.world import (
    COLOURS,
    DIRECTIONS,
    LEAD_SECONDS,
    PLACES,
    SHAPES,
    ObjectSpec,
    PromptSpec,
    Scene,
    combo_split,
    describe,
    half_extent,
    parse_prompt,
    place_at,
    placed_start,
    radius_px,
    render,
    sample_scene,
    scene_split,
    start_place,
    stream_scene,
    unknown_words,
    with_places,
)


def test_prompt_round_trip_over_many_scenes():
    rng = np.random.default_rng(0)
    prompts = set()
    for _ in range(600):
        scene = sample_scene(rng)
        assert parse_prompt(scene.prompt) == scene.spec, scene.prompt
        prompts.add(scene.prompt)
    assert len(prompts) == 600  # wording varies


def test_unknown_words_are_the_words_no_prompt_uses():
    rng = np.random.default_rng(1)
    assert not [s.prompt for s in (sample_scene(rng) for _ in range(2000)) if unknown_words(s.prompt)]
    assert unknown_words("A Purple dragon FLYING over a red circle, moving left on a black background; dragon!") == [
        "dragon",
        "flying",
        "over",
    ]
    assert unknown_words("a turquoise ball heading northeast against a grey backdrop") == []
    assert unknown_words("") == [] and unknown_words("zebra", frozenset({"zebra"})) == []


def test_parse_prompt_examples_and_rejection():
    assert parse_prompt("a red circle bouncing to the right on a black background") == PromptSpec(
        (ObjectSpec("circle", "red", "medium", "right", "medium"),), "black"
    )
    spec = parse_prompt(
        "Two shapes: a small blue square drifting up slowly and a fast green triangle moving left on a grey backdrop"
    )
    assert spec == PromptSpec(
        (
            ObjectSpec("square", "blue", "small", "up", "slow"),
            ObjectSpec("triangle", "green", "medium", "left", "fast"),
        ),
        "gray",
    )
    with pytest.raises(ValueError):
        parse_prompt("a cat sitting on a sofa")


def test_seeded_and_deterministic():
    a, b = sample_scene(3), sample_scene(3)
    assert a == b and sample_scene(4) != a
    assert np.array_equal(render(a, 10)[0], render(b, 10)[0])
    video, truth = render(a, 10)
    assert video.dtype == np.uint8 and video.shape == (10, 64, 64, 3)
    assert truth.position.shape == truth.velocity.shape == (10, len(a.objects), 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_pixels_match_ground_truth(shape):
    """The coverage-weighted centre of the drawn colour is the true position (the triangle's
    centroid sits a third of its half height below its bounding-box centre), every frame."""
    scene = Scene(
        (ObjectSpec(shape, "red", "large", "down-right", "fast"),),
        "black",
        ((0.3, 0.4),),
        "",
        height=48,
        width=80,
        fps=12,
    )
    video, truth = render(scene, 40)
    assert video.shape == (40, 48, 80, 3)
    weight = video[..., 0].astype(np.float64) / COLOURS["red"][0]
    ys, xs = np.mgrid[:48, :80] + 0.5
    centre = np.stack([(weight * xs).sum((1, 2)), (weight * ys).sum((1, 2))], -1) / weight.sum((1, 2))[:, None]
    offset = radius_px("large", 48, 80) * 0.866 / 3 if shape == "triangle" else 0.0
    np.testing.assert_allclose(centre, truth.position[:, 0] + [0.0, offset], atol=0.15)


def test_bounces_stay_inside_and_conserve_speed():
    scene = Scene((ObjectSpec("square", "blue", "large", "up-left", "fast"),), "white", ((0.3, 0.5),), "")
    _, truth = render(scene, 400)
    ext = half_extent("square", radius_px("large", 64, 64))
    pos, vel = truth.position[:, 0], truth.velocity[:, 0]
    assert (pos >= np.array(ext) - 1e-4).all() and (pos <= 64 - np.array(ext) + 1e-4).all()
    np.testing.assert_allclose(np.hypot(vel[:, 0], vel[:, 1]), 4.0, rtol=1e-5)
    assert len(np.unique(np.sign(vel), axis=0)) == 4  # bounced off both pairs of walls
    step = np.diff(pos, axis=0)
    no_bounce = (np.sign(vel[1:]) == np.sign(vel[:-1])).all(1)
    np.testing.assert_allclose(step[no_bounce], vel[1:][no_bounce], atol=1e-4)


def test_starts_leave_lead_time_before_first_bounce():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = sample_scene(rng)
        _, truth = render(scene, int(LEAD_SECONDS * scene.fps) + 1)
        assert (truth.velocity == truth.velocity[:1]).all()


def test_stream_is_endless_and_matches_render():
    scene = sample_scene(5)
    chunks = list(itertools.islice(stream_scene(scene, chunk_frames=8), 3))
    video, truth = render(scene, 24)
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), video)
    assert np.array_equal(np.concatenate([c[1].position for c in chunks]), truth.position)
    far = next(stream_scene(scene, chunk_frames=4, start=10**6))
    assert np.array_equal(far[0], render(scene, 4, start=10**6)[0])


def test_occluded_object_is_not_visible():
    under = ObjectSpec("circle", "red", "small", "right", "slow")
    over = ObjectSpec("square", "green", "large", "right", "slow")
    _, truth = render(Scene((under, over), "black", ((0.5, 0.5), (0.5, 0.5)), ""), 3)
    assert truth.visible.tolist() == [[False, True]] * 3


def test_held_out_split():
    combos = [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]
    test = [x for x in combos if combo_split(*x) == "test"]
    assert len(test) == 24
    for i in range(3):  # every colour, shape and direction is held out somewhere and trained elsewhere
        assert {x[i] for x in test} == {x[i] for x in combos}
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for _ in range(30):
            scene = sample_scene(rng, split=split)
            assert scene_split(scene) == split
            assert len({o.colour for o in scene.objects}) == len(scene.objects)


def test_describe_states_every_attribute():
    spec = PromptSpec((ObjectSpec("triangle", "orange", "large", "down-left", "slow"),), "white")
    for seed in range(20):
        assert parse_prompt(describe(spec, seed)) == spec


def test_batch_renderer_gives_the_same_pixels():
    """world.render_batch (torch, any device) == render (numpy), bit for bit, for a mixed batch."""
    from reward_forcing.world import render_batch

    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng) for _ in range(12)]
    starts = [int(rng.integers(0, 200)) for _ in scenes]
    expected = np.stack([render(s, 10, t)[0] for s, t in zip(scenes, starts)])
    assert np.array_equal(render_batch(scenes, 10, starts)[0].numpy(), expected)


def test_places_state_where_each_object_starts_and_change_nothing_else():
    """with_places keeps the scene (starts, pixels) and states the cell of each object's area
    centroid at frame 0; the prompt parses back and uses only known words."""
    rng = np.random.default_rng(5)
    seen = set()
    for i in range(300):
        scene = sample_scene(rng)
        placed = with_places(scene, i)
        assert placed.starts == scene.starts and parse_prompt(placed.prompt) == placed.spec, placed.prompt
        assert [dataclasses.replace(o, place=None) for o in placed.objects] == list(scene.objects)
        assert not unknown_words(placed.prompt), placed.prompt
        _, truth = render(placed, 1)
        for obj, centroid in zip(placed.objects, truth.position[0]):
            dy = 0.866 * radius_px(obj.size, 64, 64) / 3 if obj.shape == "triangle" else 0.0
            assert obj.place == place_at(centroid[0] / 64, (centroid[1] + dy) / 64)
            seen.add(obj.place)
    assert seen == set(PLACES)
    assert np.array_equal(render(placed, 8)[0], render(scene, 8)[0])
    assert parse_prompt("a red ball in the top left moving right on a black background").objects[0].place == "top-left"
    assert parse_prompt("a red ball moving right on a black background").objects[0].place is None


def test_snapped_places_fix_the_start_and_keep_the_cell_and_the_lead():
    """with_places(snap=True) moves each object to its cell's one start: the same objects and cells,
    the same start for every scene that places an object alike, the area centroid still in the
    stated cell, and LEAD_SECONDS of travel before the first bounce."""
    rng = np.random.default_rng(8)
    starts: dict[ObjectSpec, set] = {}
    for i in range(400):
        scene = sample_scene(rng)
        placed, snapped = with_places(scene, i), with_places(scene, i, snap=True)
        assert snapped.objects == placed.objects and snapped.prompt == placed.prompt
        lead = int(LEAD_SECONDS * snapped.fps)
        _, truth = render(snapped, lead + 1)
        for k, obj in enumerate(snapped.objects):
            starts.setdefault(obj, set()).add(snapped.starts[k])
            dy = 0.866 * radius_px(obj.size, 64, 64) / 3 if obj.shape == "triangle" else 0.0
            x, y = truth.position[0, k]
            assert obj.place == place_at(x / 64, (y + dy) / 64)
            assert np.allclose(np.diff(truth.position[:, k], axis=0), truth.velocity[0, k], atol=1e-4)  # no bounce
    assert all(len(s) == 1 for s in starts.values())
    centre = ObjectSpec("circle", "red", "small", "up", "slow", place="centre")
    assert placed_start(centre) == pytest.approx((0.5, 0.5))  # the cell's centre when it leaves the lead
    cornered = ObjectSpec("square", "red", "large", "right", "fast", place="right")  # no lead from there
    x, _ = placed_start(cornered)
    assert x * 64 == pytest.approx(64 - half_extent("square", radius_px("large", 64, 64))[0] - 32)
    with pytest.raises(ValueError, match="place"):
        placed_start(dataclasses.replace(centre, place=None))


def test_start_place_is_where_the_world_starts_objects_of_that_direction():
    """The cell opposite the heading, and one the world draws starts in for that direction."""
    assert [start_place(d) for d in ("right", "up", "down-left")] == ["left", "bottom", "top-right"]
    rng = np.random.default_rng(6)
    drawn = set()
    for i in range(1500):
        placed = with_places(sample_scene(rng, n_objects=1), i)
        drawn.add((placed.objects[0].direction, placed.objects[0].place))
    assert all((d, start_place(d)) in drawn for d in DIRECTIONS)
