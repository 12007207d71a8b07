"""The metrics measured on world videos whose truth is known."""

import numpy as np
import pytest
import torch

from reward_forcing.eval import as_video, drift, dynamic_degree, evaluate_video, flicker, frame_copying
from reward_forcing.world import ObjectSpec, Scene, render, sample_scene, speed_px

# one circle moving right from x = 16 to x = 52 px in 21 frames: no bounce, never back at its start
_LINE = Scene(
    (ObjectSpec("circle", "red", "small", "right", "slow"),),
    "black",
    ((0.25, 0.5),),
    "a small red circle moving right slowly on a black background",
)


@pytest.fixture(scope="module")
def moving():
    return render(sample_scene(11, n_objects=2), 48)[0]


def test_as_video_accepts_float_and_torch(moving):
    assert np.array_equal(as_video(torch.from_numpy(moving)), moving)
    assert np.array_equal(as_video(moving / 255.0), moving)
    with pytest.raises(ValueError):
        as_video(moving[..., 0])


def test_static_video_is_not_dynamic_and_a_full_copy(moving):
    static = np.repeat(moving[:1], 24, axis=0)
    dyn = dynamic_degree(static)
    assert not dyn["dynamic"] and dyn["moving_fraction"] == 0.0
    assert dyn["pair_score"].max() < 0.05
    copy = frame_copying(static)
    np.testing.assert_allclose(copy["per_frame"], 1.0)
    assert copy["late_mean"] == pytest.approx(1.0)


def test_moving_video_is_dynamic_and_flow_measures_its_speed():
    scene = Scene((ObjectSpec("square", "yellow", "large", "down-left", "medium"),), "gray", ((0.5, 0.5),), "")
    video, truth = render(scene, 32)
    dyn = dynamic_degree(video)
    assert dyn["dynamic"] and dyn["moving_fraction"] == 1.0
    assert dyn["threshold"] == 6 * 64 / 256
    # the top 5 % of flow magnitudes lie on the object: they measure its true speed
    np.testing.assert_allclose(np.median(dyn["pair_score"]), speed_px("medium", 64, 64, 16), rtol=0.1)


def test_dynamic_rule_needs_a_quarter_of_the_pairs():
    n, h, w = 20, 32, 32
    flow = np.zeros((n, h, w, 2), np.float32)
    flow[:, :4, :, 0] = 1.0  # an eighth of the pixels move by one pixel: the top 5 % mean is 1
    threshold = 6 * 32 / 256  # 0.75
    assert dynamic_degree(flow=flow)["pair_score"] == pytest.approx(np.ones(n))
    flow[5:] = 0.0  # 5 = round(20 / 4) moving pairs: dynamic
    dyn = dynamic_degree(flow=flow)
    assert dyn["threshold"] == threshold and dyn["dynamic"] and dyn["moving_fraction"] == 0.25
    flow[4] = 0.0  # 4 moving pairs: not
    assert not dynamic_degree(flow=flow)["dynamic"]


def test_frame_copying_separates_moving_frozen_and_copied_videos():
    video = render(_LINE, 21)[0]
    moving = frame_copying(video)
    assert moving["per_frame"][0] == 1.0 and moving["late_mean"] < 0.05
    assert np.all(np.diff(moving["per_frame"][3:12]) <= 1e-6)  # falls as the circle leaves its start

    copied = video.copy()
    copied[10:] = video[0]  # the second half copies the start, as a sink-bound model would
    assert frame_copying(copied)["late_mean"] == pytest.approx(1.0)
    noisy = copied.astype(np.int16) + np.random.default_rng(0).integers(-1, 2, copied.shape) * (
        np.random.default_rng(1).random(copied.shape) < 0.05
    )  # sparse ±1 codec-like noise
    assert frame_copying(np.clip(noisy, 0, 255).astype(np.uint8))["late_mean"] > 0.9

    frozen = video.copy()
    frozen[10:] = video[10]  # freezes at half length, away from the start: stalled, not a copy
    out = frame_copying(frozen)
    assert out["late_mean"] < 0.05
    assert dynamic_degree(frozen)["moving_fraction"] == pytest.approx(0.5, abs=0.06)


def test_drift_is_zero_for_stationary_statistics_and_large_for_a_fade(moving):
    steady = drift(moving)
    assert steady["drift"] < 0.02
    assert all(abs(c) < 0.01 for c in steady["change"].values())
    fade = np.linspace(0.0, 1.0, len(moving))[:, None, None, None]
    faded = np.rint((1 - fade) * moving + fade * 128).astype(np.uint8)
    out = drift(faded)
    assert out["drift"] > 0.9
    for stat in ("saturation", "contrast", "sharpness"):  # the last quarter is 75-100 % grey
        assert out["last"][stat] < 0.3 * out["first"][stat]


def test_flicker_is_small_for_smooth_motion_and_the_jump_size_for_brightness_jumps(moving):
    assert flicker(np.repeat(moving[:1], 8, axis=0))["mean"] == 0.0
    smooth = flicker(moving)["mean"]
    assert smooth < 0.005
    gain = np.random.default_rng(0).choice([-40.0, 40.0], size=len(moving))
    jumpy = np.clip(moving + gain[:, None, None, None], 0, 255).astype(np.uint8)
    jump = flicker(jumpy)
    assert jump["mean"] > 10 * smooth
    # where consecutive gains differ the frames differ by up to 80 levels (less where clipped)
    changed = gain[1:] != gain[:-1]
    assert jump["per_pair"][changed].min() > 0.1 and jump["per_pair"][~changed].max() < 0.01


def test_evaluate_video_collects_everything(moving):
    scene = sample_scene(11, n_objects=2)
    result = evaluate_video(moving, scene.prompt, fps=scene.fps)
    s = result["summary"]
    assert s["dynamic_degree"] == 1.0 and s["flicker"] < 0.005 and s["drift"] < 0.02
    assert s["adherence"] == pytest.approx(1.0, abs=0.02)
    assert len(result["series"]["flow_score"]) == len(moving) - 1
    assert len(result["series"]["frame_copying"]) == len(moving)
    assert "found" not in evaluate_video(moving)["summary"]
