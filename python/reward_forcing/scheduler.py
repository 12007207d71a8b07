"""Flow matching, in one place: the noising and denoising formulas, the timestep shift, the
few-step schedule of the distilled generator and its denoising loop (docs/design.md §4), and the
teacher's multi-step sampler (docs/design.md §5) — used by the pipeline, the trainers and the
benchmarks alike.

Flow matching: ``x_t = (1 - sigma) * x0 + sigma * eps`` and the model predicts ``v = eps - x0``;
a model's timestep is ``t = sigma * num_train_timesteps``. A few-step step predicts the clean
sample ``x0_hat = x_t - sigma * v`` and the next step's input is that prediction *re-noised with
fresh noise* at the next sigma. This is not an ODE solver step, so diffusers'
``FlowMatchEulerDiscreteScheduler`` (``x + (sigma_next - sigma) * v``, deterministic) does not
give it; a small dataclass does.

``sigma`` arguments are a number, or a tensor ``[B]`` (one per sample) or ``[B, F]`` (one per
latent frame of ``[B, C, F, H, W]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000  # Wan's: timesteps run over [0, 1000]


def shift_sigma(sigma, shift: float):
    """Wan's timestep shift ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_of(t, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """The noise level of model timestep ``t``."""
    return t / num_train_timesteps


def timestep_of(sigma, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """The model timestep of noise level ``sigma``."""
    return sigma * num_train_timesteps


def broadcast_sigma(sigma, like: torch.Tensor):
    """``sigma`` shaped to broadcast against ``like`` (in its dtype and device): a number as it is,
    ``[B]`` as ``[B, 1, ...]``, ``[B, F]`` as ``[B, 1, F, 1, 1]``."""
    if not isinstance(sigma, torch.Tensor):
        return sigma
    sigma = sigma.to(device=like.device, dtype=like.dtype)
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() == 1:
        return sigma.reshape(-1, *([1] * (like.dim() - 1)))
    if sigma.dim() == 2 and like.dim() == 5:
        return sigma[:, None, :, None, None]
    raise ValueError(
        f"sigma must be a number, [B] or [B, F] for [B, C, F, H, W]; got {tuple(sigma.shape)} for {tuple(like.shape)}"
    )


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """``x_t = (1 - sigma) * x0 + sigma * noise``."""
    s = broadcast_sigma(sigma, x0)
    return (1 - s) * x0 + s * noise


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma) -> torch.Tensor:
    """``x0_hat = x_t - sigma * v``."""
    return x_t - broadcast_sigma(sigma, x_t) * velocity


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


@dataclass(frozen=True)
class FewStepFlowSchedule:
    """``steps`` are timesteps in ``[0, num_train_timesteps]`` before the shift; the published
    Reward Forcing / Self Forcing generator uses ``(1000, 750, 500, 250)`` with shift 5, i.e.
    ``sigmas ~ (1.0, 0.9375, 0.8333, 0.625)`` and model timesteps ``1000 * sigmas``."""

    steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def __post_init__(self):
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or any(not 0 < s <= self.num_train_timesteps for s in steps):
            raise ValueError(f"steps must be non-empty and in (0, {self.num_train_timesteps}], got {steps}")
        if any(a <= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must be strictly decreasing, got {steps}")
        if not self.shift > 0:
            raise ValueError(f"shift must be positive, got {self.shift}")

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The warped noise level of each step."""
        return tuple(shift_sigma(sigma_of(s, self.num_train_timesteps), self.shift) for s in self.steps)

    @property
    def timesteps(self) -> tuple[float, ...]:
        """The warped timesteps the model's time embedding receives (1000, 937.5, 833.3, 625)."""
        return tuple(timestep_of(s, self.num_train_timesteps) for s in self.sigmas)

    def __len__(self) -> int:
        return len(self.steps)

    def grid_marks(self, num_steps: int) -> list[int]:
        """The indices of the student's steps on a ``num_steps``-step grid uniform in the
        un-shifted time (the teacher's ODE in the ODE-init stage); ValueError when one is off it."""
        n, total = num_steps, self.num_train_timesteps
        marks = [round((1 - sigma_of(s, total)) * n) for s in self.steps]
        if any(abs(m / n - (1 - sigma_of(s, total))) > 1e-9 for m, s in zip(marks, self.steps)):
            raise ValueError(
                f"the student's steps {self.steps} are not on a {n}-step grid "
                "(ode_steps must put each of them on a grid point)"
            )
        return marks

    predict_x0 = staticmethod(predict_x0)
    add_noise = staticmethod(add_noise)

    def denoise(
        self,
        x: torch.Tensor,
        velocity: Callable[[torch.Tensor, float], torch.Tensor],
        noise: Callable[[torch.Tensor], torch.Tensor],
        stop: int | None = None,
    ) -> torch.Tensor:
        """The few-step loop, the one the pipeline, the self-forcing rollout and the benchmarks
        run. ``x`` is the first step's input; step ``i`` predicts ``x0_hat`` from
        ``velocity(x, timesteps[i])`` and the next input re-noises it with ``noise(x0_hat)`` (a
        tensor of its shape) at ``sigmas[i + 1]``. Runs the steps before ``stop`` (default: all)
        and returns the last ``x0_hat`` (float32). All steps but the last run without grad, the
        last one in the caller's grad mode (self forcing's exit step)."""
        stop = len(self) if stop is None else stop
        if not 1 <= stop <= len(self):
            raise ValueError(f"stop must be in [1, {len(self)}], got {stop}")
        grad = torch.is_grad_enabled()
        for i in range(stop):
            last = i + 1 == stop
            with torch.set_grad_enabled(grad and last):
                x0 = predict_x0(x, velocity(x, self.timesteps[i]).float(), self.sigmas[i])
            if not last:
                with torch.no_grad():
                    x = add_noise(x0, noise(x0), self.sigmas[i + 1])
        return x0


def euler_sigmas(num_steps: int, shift: float) -> list[float]:
    """The teacher sampler's noise levels: ``num_steps`` Euler steps uniform in the un-shifted time
    from 1 to 0, warped by ``shift`` (``num_steps + 1`` values)."""
    return [float(shift_sigma(1 - i / num_steps, shift)) for i in range(num_steps + 1)]


@torch.no_grad()
def teacher_trajectory(
    teacher: Callable,
    cond,
    uncond,
    noise: torch.Tensor,
    schedule: FewStepFlowSchedule,
    guidance_scale: float = 3.0,
    num_steps: int = 48,
    chunk_frames: int | None = None,
) -> torch.Tensor:
    """The teacher's multi-step sampler: Euler on the flow ODE ``dx/dsigma = v`` with CFG over
    ``num_steps`` steps, uniform in the un-shifted time and warped by the schedule's shift;
    ``teacher(x, t, prompt) -> v``. Returns its states at the student's timesteps and the clean
    end, ``[B, K + 1, C, F, H, W]`` (float32); the student's steps must lie on the grid
    (``num_steps`` a multiple of 4 for 1000/750/500/250).

    A block-causal teacher (``chunk_frames``, the ``teacher_chunk_frames`` it was trained with) is
    sampled chunk by chunk: the ODE runs on one chunk while the chunks before it sit in its context
    clean (t = 0, as in a streaming cache); ``teacher`` then gets the prefix up to the chunk and
    ``t [B, F]``. Each chunk's states are taken at the same marks."""
    n, total = num_steps, schedule.num_train_timesteps
    marks = schedule.grid_marks(n)
    sigmas = euler_sigmas(n, schedule.shift)
    x = noise.float().clone()
    batch, frames = x.shape[0], x.shape[2]
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    step = chunk_frames or frames
    states = x.new_empty(batch, len(marks) + 1, *x.shape[1:])
    for start in range(0, frames, step):
        end = min(start + step, frames)
        prefix = x[:, :, :end]  # a view: the chunk's Euler updates show in it
        per_frame = torch.zeros(batch, end, device=x.device)  # the chunks before sit at t = 0
        for i in range(n):
            if i in marks:
                states[:, marks.index(i), :, start:end] = x[:, :, start:end]
            t = timestep_of(sigmas[i], total)
            if chunk_frames is not None:
                per_frame[:, start:end] = t
                t = per_frame
            v = cfg(
                teacher(prefix, t, cond)[:, :, start:].float(),
                teacher(prefix, t, uncond)[:, :, start:].float(),
                guidance_scale,
            )
            x[:, :, start:end] += (sigmas[i + 1] - sigmas[i]) * v
    states[:, -1] = x
    return states
