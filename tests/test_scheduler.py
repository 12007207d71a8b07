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


def test_block_causal_teacher_trajectory_lands_each_chunk_on_a_point_mass():
    """For data = one point x*, v = (x - x*) / sigma per frame: every chunk's Euler ODE is a straight
    line onto x* through (1 - sigma) x* + sigma eps at the student's steps, and the teacher sees the
    finished chunks before it at t = 0."""
    from reward_forcing.scheduler import teacher_trajectory

    sched = FewStepFlowSchedule()
    target, noise = torch.randn(2, 4, 5, 3, 3, dtype=torch.float64), torch.randn(2, 4, 5, 3, 3, dtype=torch.float64)
    seen = []

    def teacher(x, t, c):
        seen.append((x.shape[2], t.clone()))
        return (x - target[:, :, : x.shape[2]].float()) / (t / 1000).clamp(min=1e-6)[:, None, :, None, None]

    traj = teacher_trajectory(teacher, None, None, noise.float(), sched, num_steps=4, chunk_frames=2)
    for k, sigma in enumerate(sched.sigmas):
        torch.testing.assert_close(traj[:, k].double(), (1 - sigma) * target + sigma * noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(traj[:, -1].double(), target, atol=1e-5, rtol=0)
    assert [n for n, _ in seen] == [2] * 8 + [4] * 8 + [5] * 8  # CFG: two calls per step; chunks of 2, 2, 1
    last_chunk = seen[-1][1]
    assert torch.equal(last_chunk[:, :4], torch.zeros(2, 4)) and bool((last_chunk[:, 4] > 0).all())
    with pytest.raises(ValueError, match="chunk_frames"):
        teacher_trajectory(teacher, None, None, noise.float(), sched, num_steps=4, chunk_frames=0)


def test_block_causal_teacher_trajectory_is_causal_and_one_chunk_is_the_whole_clip():
    from reward_forcing.models.causal_wan import CausalWanModel
    from reward_forcing.models.wan_config import WAN_TINY
    from reward_forcing.scheduler import teacher_trajectory

    torch.manual_seed(0)
    model = CausalWanModel(WAN_TINY).eval()
    cond, uncond = torch.randn(1, 8, 32), torch.randn(1, 8, 32)
    noise, sched = torch.randn(1, 16, 4, 4, 4), FewStepFlowSchedule(shift=3.0)

    def sample(n, chunk):
        teacher = lambda x, t, c: model(x, t, c, chunk_frames=chunk)  # noqa: E731
        return teacher_trajectory(teacher, cond, uncond, n, sched, 3.0, 4, chunk_frames=chunk)[:, -1]

    later = noise.clone()
    later[:, :, 2:] = torch.randn(1, 16, 2, 4, 4)  # other noise for the second chunk only
    a, b = sample(noise, 2), sample(later, 2)
    assert torch.equal(a[:, :, :2], b[:, :, :2])  # the first chunk never sees the second
    earlier = noise.clone()
    earlier[:, :, :2] = torch.randn(1, 16, 2, 4, 4)
    assert not torch.allclose(a[:, :, 2:], sample(earlier, 2)[:, :, 2:])  # the second chunk continues the first
    whole = teacher_trajectory(model, cond, uncond, noise, sched, 3.0, 4)[:, -1]  # bidirectional, t per sample
    torch.testing.assert_close(sample(noise, 4), whole, atol=1e-4, rtol=1e-4)
