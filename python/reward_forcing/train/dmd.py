"""Distribution-matching distillation (DMD) and Re-DMD, the formulas of docs/design.md §5 (the
flow-matching ones, ``add_noise``, ``predict_x0`` and ``cfg``, are :mod:`reward_forcing.scheduler`'s).

Flow matching: ``x_t = (1 - sigma) x0 + sigma eps``; every score model here is used through its
clean-sample prediction ``x0_hat``. Shapes: a leading batch dim ``B``, anything after it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..scheduler import NUM_TRAIN_TIMESTEPS, broadcast_sigma, shift_sigma, sigma_of
from ..scheduler import add_noise as add_noise  # noqa: F401  (re-exported: one set of formulas)
from ..scheduler import cfg as cfg  # noqa: F401
from ..scheduler import predict_x0 as predict_x0  # noqa: F401


def _sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dim: ``[B]`` (``[B]`` inputs are returned as they are)."""
    return x.reshape(x.shape[0], -1).mean(1)


def sample_timesteps(
    batch: int,
    *,
    shift: float = 5.0,
    min_t: float = 20.0,
    max_t: float = 980.0,
    low: int = 0,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    generator=None,
    device=None,
) -> torch.Tensor:
    """The published DMD/critic timestep draw: an integer t uniform in ``[low, 1000)``, warped by
    the shift (``sigma' = s sigma / (1 + (s - 1) sigma)``), then clamped to ``[min_t, max_t]``.
    Returns the warped timesteps ``[B]`` (float32); ``sigma = t / 1000``. With shift 5 about
    five in six draws land above 500."""
    if not 0 <= low < num_train_timesteps:
        raise ValueError(f"low must be in [0, {num_train_timesteps}), got {low}")
    t = torch.randint(low, num_train_timesteps, (batch,), generator=generator, device=device)
    t = shift_sigma(sigma_of(t.float(), num_train_timesteps), shift) * num_train_timesteps
    return t.clamp(min_t, max_t)


def dmd_gradient(x0: torch.Tensor, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """The normalised DMD gradient ``g = (x_fake - x_real) / mean|x0 - x_real|`` (mean over all
    but the batch dim), computed in float64; a sample with a zero norm (x0 = x_real) gets g = 0
    (Self Forcing's ``nan_to_num`` would give it float max).
    Returned in float32, without grad."""
    x0, x_real, x_fake = (x.detach().double() for x in (x0, x_real, x_fake))
    norm = _sample_mean((x0 - x_real).abs())
    norm = torch.where(norm > 0, norm, torch.inf)
    return ((x_fake - x_real) / broadcast_sigma(norm, x0)).float()


def dmd_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-sample DMD loss ``0.5 MSE(x0, sg(x0 - g))`` ``[B]``: its gradient w.r.t. ``x0`` is
    ``g / numel_per_sample``."""
    target = (x0 - grad.to(x0.dtype)).detach()
    return 0.5 * _sample_mean(F.mse_loss(x0.float(), target.float(), reduction="none"))


def reward_weights(
    rewards: torch.Tensor, beta: float, *, normalize: bool = False, clip: float | None = None, group=None
) -> torch.Tensor:
    """Re-DMD per-sample weights ``w = exp(beta r)`` (published: neither option).

    ``normalize`` divides by the mean weight over the *global* batch (all-reduced over ``group``
    when torch.distributed is initialised), so that the weights reweight samples without scaling
    the step size; ``clip`` then caps each weight at ``clip``. beta = 0 gives exactly 1."""
    w = torch.exp(beta * rewards.detach().double())
    if normalize:
        total = torch.stack([w.sum(), torch.tensor(float(w.numel()), dtype=w.dtype, device=w.device)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total, group=group)
        w = w / (total[0] / total[1])
    if clip is not None:
        w = w.clamp(max=clip)
    return w.float()


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``mean_b w_b loss_b`` (plain mean without weights)."""
    if weights is None:
        return per_sample.mean()
    return (weights.to(per_sample) * per_sample).mean()


def denoising_loss(
    pred_velocity: torch.Tensor,
    noise: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample flow-matching loss ``mean (v - (eps - x0))^2`` ``[B]`` of the critic on the
    generator's (detached) samples. Weight it with :func:`critic_weights` for the tilted critic.
    With ``sigma`` (``[B]``) the error is measured on the clean latents instead,
    ``sigma (v - v*) = x0_hat - x0`` (``loss_space: x0``): the velocity loss weights a noise
    level by ``1 / sigma^2``, which for x0-predicting models leaves the high noise levels (the ones
    few-step sampling needs) almost untrained. ``weight`` (broadcasting against ``x0``) weights
    each element's squared error, e.g. ``1 + w * object_mask`` (docs/design.md §10)."""
    err = pred_velocity.float() - (noise - x0.detach()).float()
    if sigma is not None:
        err = err * broadcast_sigma(torch.as_tensor(sigma, dtype=err.dtype, device=err.device), err)
    err = err.pow(2)
    return _sample_mean(err if weight is None else err * weight.float())


def critic_weights(rewards: torch.Tensor, beta: float, *, normalize: bool = True, group=None) -> torch.Tensor:
    """Tilted-critic weights ``exp(-beta r)`` (docs/design.md §5): the critic then models
    ``p_G exp(-beta r) / Z``, so DMD's fixed point is ``p_real exp(beta r) / Z``. Normalising by
    the global mean changes only the step size, not the fixed point."""
    return reward_weights(rewards, -beta, normalize=normalize, group=group)
