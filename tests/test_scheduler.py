"""The few-step schedule: Wan's shift-5 warp of t = 1000, 750, 500, 250 (the same warp as
diffusers' flow-matching scheduler), x0 prediction and re-noising."""

import pytest
import torch

from reward_forcing.scheduler import FewStepFlowSchedule, shift_sigma


def test_published_schedule():
    sched = FewStepFlowSchedule()
    assert sched.sigmas == pytest.approx([1.0, 0.9375, 5 / 6, 0.625])
    assert sched.timesteps == pytest.approx([1000.0, 937.5, 833.3333, 625.0])
    assert len(sched) == 4
    assert shift_sigma(0.5, 1.0) == 0.5  # shift 1: no warp


def test_warp_matches_diffusers_flow_matching_scheduler():
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    theirs.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    ours = FewStepFlowSchedule()
    torch.testing.assert_close(theirs.sigmas[:4], torch.tensor(ours.sigmas))
    torch.testing.assert_close(theirs.timesteps, torch.tensor(ours.timesteps))


def test_predict_x0_inverts_add_noise():
    x0, eps = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64), torch.randn(2, 16, 3, 4, 4, dtype=torch.float64)
    for sigma in FewStepFlowSchedule().sigmas:
        x_t = FewStepFlowSchedule.add_noise(x0, eps, sigma)
        torch.testing.assert_close(FewStepFlowSchedule.predict_x0(x_t, eps - x0, sigma), x0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps=()),
        dict(steps=(1000, 1000)),
        dict(steps=(500, 750)),
        dict(steps=(1200,)),
        dict(steps=(0,)),
        dict(shift=0),
    ],
)
def test_invalid_schedules(kwargs):
    with pytest.raises(ValueError):
        FewStepFlowSchedule(**kwargs)
