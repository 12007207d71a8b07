import math

import pytest
import torch

from reward_forcing.scheduler import shift_sigma
from reward_forcing.train import dmd


def test_timesteps_range_and_warp():
    t = dmd.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980
    # t = 1000 * shift(u), u uniform on {0, ..., 999}/1000: P(t > 500) = P(u > 1/6) ~ 5/6
    assert abs(float((t > 500).float().mean()) - 5 / 6) < 0.01
    u = torch.arange(1000) / 1000
    allowed = (shift_sigma(u, 5.0) * 1000).clamp(20, 980)
    assert torch.isin(t, allowed.float()).all()
    # the ts_schedule narrowing: draws start at `low`
    low = dmd.sample_timesteps(1000, low=500, generator=torch.Generator().manual_seed(1))
    assert low.min() >= shift_sigma(0.5, 5.0) * 1000 - 1e-3
    with pytest.raises(ValueError):
        dmd.sample_timesteps(1, low=1000)


def test_dmd_gradient_and_loss_by_hand():
    x0 = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    real = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    fake = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    # sample 0: mean|x0 - real| = 1.5; sample 1: mean(1, 2) = 1.5
    g = dmd.dmd_gradient(x0, real, fake)
    torch.testing.assert_close(g, torch.tensor([[0.5, 1.0], [-1.0, -1.0]]) / 1.5)
    x = x0.clone().requires_grad_(True)
    loss = dmd.dmd_loss(x, g)
    # 0.5 * mean(g^2) per sample
    torch.testing.assert_close(loss, 0.5 * (g**2).mean(1))
    loss.sum().backward()
    torch.testing.assert_close(x.grad, g / 2)  # d/dx of 0.5 mean((x - sg(x - g))^2) = g / numel


def test_dmd_gradient_zero_norm_is_zero():
    x = torch.ones(1, 3)
    assert torch.equal(dmd.dmd_gradient(x, x, x + 1), torch.zeros(1, 3))


def test_beta_zero_is_exactly_dmd():
    x0 = torch.randn(4, 2, 3, 4, 4, requires_grad=True)
    g = dmd.dmd_gradient(x0, torch.randn_like(x0), torch.randn_like(x0))
    r = torch.randn(4)
    w = dmd.reward_weights(r, 0.0, normalize=True)
    assert torch.equal(w, torch.ones(4))
    plain = dmd.weighted_mean(dmd.dmd_loss(x0, g), None)
    weighted = dmd.weighted_mean(dmd.dmd_loss(x0, g), w)
    assert torch.equal(plain, weighted)
    (ga,) = torch.autograd.grad(plain, x0)
    (gb,) = torch.autograd.grad(weighted, x0)
    assert torch.equal(ga, gb)


def test_reward_weights_normalise_and_clip():
    r = torch.tensor([0.0, 1.0, -1.0, 0.5])
    w = dmd.reward_weights(r, 2.0)
    torch.testing.assert_close(w, torch.exp(2 * r))
    wn = dmd.reward_weights(r, 2.0, normalize=True)
    torch.testing.assert_close(wn.mean(), torch.tensor(1.0))
    torch.testing.assert_close(wn / wn[0], w / w[0])
    wc = dmd.reward_weights(r, 2.0, normalize=True, clip=1.5)
    assert wc.max() <= 1.5 and torch.equal(wc[wn <= 1.5], wn[wn <= 1.5])
    # batch of one: exp(beta r) itself, not a z-scored 0 (the reward's constants are fixed)
    torch.testing.assert_close(dmd.reward_weights(torch.tensor([1.0]), 2.0), torch.tensor([math.exp(2)]))


def test_critic_loss_and_tilt_weights():
    x0, noise, v = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(dmd.denoising_loss(v, noise, x0), ((v - (noise - x0)) ** 2).mean(1))
    # loss_space x0: the error of x0_hat = x_t - sigma v, with x_t = (1 - sigma) x0 + sigma noise
    sigma = torch.rand(v.shape[0]) + 0.1
    x_t = (1 - sigma[:, None]) * x0 + sigma[:, None] * noise
    x0_hat = x_t - sigma[:, None] * v
    torch.testing.assert_close(dmd.denoising_loss(v, noise, x0, sigma), ((x0_hat - x0) ** 2).mean(1))
    r = torch.tensor([0.0, 1.0, 2.0])
    w = dmd.critic_weights(r, 1.0, normalize=False)
    torch.testing.assert_close(w, torch.exp(-r))
    torch.testing.assert_close(dmd.critic_weights(r, 1.0).mean(), torch.tensor(1.0))


def test_noise_and_prediction_inverse():
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sigma = torch.tensor([0.2, 0.9])
    x_t = dmd.add_noise(x0, eps, sigma)
    torch.testing.assert_close(dmd.predict_x0(x_t, eps - x0, sigma), x0)
    torch.testing.assert_close(dmd.cfg(torch.ones(2), torch.zeros(2), 3.0), torch.full((2,), 3.0))
