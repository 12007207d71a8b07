"""A 1-D toy where the answer is known (docs/design.md §5): data = two Gaussian modes at -2 and +2, a
reward ~1 on the right mode and ~0 on the left; a small MLP generator (noise -> sample) trained by
DMD against the *exact* real score of the mixture and an MLP critic (fake score) trained by the
flow-matching denoising loss on the generator's samples.

Methods, at the same learning rate, step count and batch:

* ``"dmd"``: plain DMD; its fixed point is the data, right-mode mass ``p``.
* ``"weighted"``: the published Re-DMD generator-side weighting ``exp(beta r)`` (normalised by the
  batch mean, so it only reweights samples): the fixed point is still the data (g = 0 there).
* ``"tilted"``: the critic's loss weighted by ``exp(-beta r)``: the fixed point is the tilted
  distribution ``p_real exp(beta r) / Z``, right-mode mass :func:`tilted_right_mass`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..scheduler import sigma_of
from . import dmd
from .config import lr_scale

METHODS = ("dmd", "weighted", "tilted")


@dataclass(frozen=True)
class ToyConfig:
    right_weight: float = 0.5  # p, the data's mass on the right mode
    mode: float = 2.0  # modes at -mode and +mode
    std: float = 0.5  # std of each mode
    reward_sharpness: float = 4.0  # r(x) = sigmoid(sharpness x)
    beta: float = 1.0
    steps: int = 2000
    critic_steps: int = 1  # critic updates per generator update
    batch: int = 256
    lr: float = 3e-3  # generator and critic, cosine-decayed to 0
    hidden: int = 64
    shift: float = 5.0  # the published timestep warp


def reward(x: torch.Tensor, cfg: ToyConfig) -> torch.Tensor:
    return torch.sigmoid(cfg.reward_sharpness * x)


def real_x0(x_t: torch.Tensor, sigma: torch.Tensor, cfg: ToyConfig) -> torch.Tensor:
    """The exact ``E[x0 | x_t]`` of the two-Gaussian data under ``x_t = (1 - s) x0 + s eps``."""
    a, s2 = 1 - sigma, cfg.std**2
    var = a * a * s2 + sigma * sigma
    means = torch.stack([-cfg.mode * torch.ones_like(x_t), cfg.mode * torch.ones_like(x_t)], -1)
    logw = torch.log(torch.tensor([1 - cfg.right_weight, cfg.right_weight], dtype=x_t.dtype))
    logp = logw - 0.5 * (x_t[..., None] - a[..., None] * means) ** 2 / var[..., None]
    post = torch.softmax(logp, -1)
    cond = means + (a * s2 / var)[..., None] * (x_t[..., None] - a[..., None] * means)
    return (post * cond).sum(-1)


def tilted_right_mass(cfg: ToyConfig, beta: float | None = None) -> float:
    """Mass on x > 0 of ``p_real exp(beta r) / Z`` (numerical integral; ~``p e^b / (p e^b + 1 - p)``)."""
    beta = cfg.beta if beta is None else beta
    x = torch.linspace(-cfg.mode - 8 * cfg.std, cfg.mode + 8 * cfg.std, 20001, dtype=torch.float64)
    dens = sum(
        w * torch.exp(-0.5 * ((x - m) / cfg.std) ** 2)
        for w, m in ((1 - cfg.right_weight, -cfg.mode), (cfg.right_weight, cfg.mode))
    )
    dens = dens * torch.exp(beta * reward(x, cfg))
    return float(dens[x > 0].sum() / dens.sum())


def _mlp(inputs: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
    )


class Critic(nn.Module):
    """Fake score: predicts the flow-matching velocity from ``(x_t, sigma)``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = _mlp(2, hidden)

    def forward(self, x_t, sigma):
        return self.net(torch.stack([x_t, sigma], -1)).squeeze(-1)


def train(method: str, seed: int, cfg: ToyConfig = ToyConfig()) -> dict:
    """Trains one generator; returns its right-mode mass and the mass near each mode (fraction of
    20000 samples within 1 of -mode / +mode)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, critic = _mlp(1, cfg.hidden), Critic(2 * cfg.hidden)
    opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr, betas=(0.0, 0.999), weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=cfg.lr, betas=(0.0, 0.999), weight_decay=0.0)

    decay = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: lr_scale(i, 0, cfg.steps, 0.0)) for o in (opt_g, opt_c)]

    def sample(n):
        return generator(torch.randn(n, 1, generator=gen)).squeeze(-1)

    def noised(x0):
        sigma = sigma_of(dmd.sample_timesteps(len(x0), shift=cfg.shift, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        return dmd.add_noise(x0, noise, sigma), noise, sigma

    for _ in range(cfg.steps):
        for _ in range(cfg.critic_steps):
            with torch.no_grad():
                x0 = sample(cfg.batch)
            x_t, noise, sigma = noised(x0)
            w = dmd.critic_weights(reward(x0, cfg), cfg.beta) if method == "tilted" else None
            loss = dmd.weighted_mean(dmd.denoising_loss(critic(x_t, sigma), noise, x0), w)
            opt_c.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
        x0 = sample(cfg.batch)
        x_t, _, sigma = noised(x0.detach())
        with torch.no_grad():
            x_fake = dmd.predict_x0(x_t, critic(x_t, sigma), sigma)
            x_real = real_x0(x_t, sigma, cfg)
        # One normaliser for the batch: a video sample's mean|x0 - x_real| averages ~1e6 elements,
        # a 1-D sample's would be a single |difference| and make g a noisy +-ratio.
        g = dmd.dmd_gradient(x0[None], x_real[None], x_fake[None])[0]
        w = dmd.reward_weights(reward(x0, cfg), cfg.beta, normalize=True) if method == "weighted" else None
        loss = dmd.weighted_mean(dmd.dmd_loss(x0, g), w)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        for d in decay:
            d.step()

    with torch.no_grad():
        x = sample(20000)
    near = lambda m: float(((x - m).abs() < 1).float().mean())  # noqa: E731
    return {
        "method": method,
        "seed": seed,
        "right_mass": float((x > 0).float().mean()),
        "near_left": near(-cfg.mode),
        "near_right": near(cfg.mode),
        "mean": float(x.mean()),
        "std": float(x.std()),
    }


def compare(seeds=(0, 1, 2), cfg: ToyConfig = ToyConfig()) -> list[dict]:
    """All methods on all seeds (a few seconds each on one CPU core)."""
    return [train(m, s, cfg) for m in METHODS for s in seeds]


if __name__ == "__main__":
    c = ToyConfig()
    tilted = c.right_weight * math.e**c.beta
    print(
        f"data right mass {c.right_weight}, tilted target {tilted_right_mass(c):.3f} "
        f"(closed form {tilted / (tilted + 1 - c.right_weight):.3f})"
    )
    for row in compare(cfg=c):
        print(row)
