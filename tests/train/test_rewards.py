import numpy as np
import pytest
import torch

from reward_forcing.train.rewards import (
    FLOW_MOTION_MEAN,
    FLOW_MOTION_STD,
    FlowMotionReward,
    synthetic_motion_videos,
    translating_texture,
)


def _video(speed, seed=0):
    return translating_texture(9, 64, speed, 0.0, np.random.default_rng(seed))


def test_static_scores_below_moving():
    reward = FlowMotionReward()
    scores = reward(np.stack([_video(0.0), _video(0.5), _video(2.0)]))
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores[0] < scores[1] < scores[2]
    assert scores[0] < -1.5 and scores[2] > 0.5


def test_constants_fixed_and_batch_of_one_not_zeroed():
    reward = FlowMotionReward()
    assert (reward.mean, reward.std) == (FLOW_MOTION_MEAN, FLOW_MOTION_STD)
    videos = np.stack([_video(0.0), _video(2.0)])
    both = reward(videos)
    one = reward(videos[1:])
    assert torch.equal(one, both[1:])  # a sample's score does not depend on its batch
    assert abs(float(one)) > 0.5
    # float input in [0, 1] and torch tensors give the same scores as uint8
    torch.testing.assert_close(reward(torch.from_numpy(videos).float() / 255), both, atol=0.05, rtol=0)


def test_stored_constants_are_the_calibration():
    calibrated = FlowMotionReward().calibrate(synthetic_motion_videos())
    assert abs(calibrated.mean - FLOW_MOTION_MEAN) < 1e-3 and abs(calibrated.std - FLOW_MOTION_STD) < 1e-3


def test_bad_input():
    with pytest.raises(ValueError):
        FlowMotionReward()(np.zeros((9, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        FlowMotionReward(std=0.0)
