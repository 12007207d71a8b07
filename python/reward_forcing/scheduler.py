"""The few-step flow-matching schedule of the distilled generator (docs/design.md §4).

Flow matching: ``x_t = (1 - sigma) * x0 + sigma * eps`` and the model predicts ``v = eps - x0``.
A step predicts the clean sample ``x0_hat = x_t - sigma * v`` and the next step's input is that
prediction *re-noised with fresh noise* at the next sigma. This is not an ODE solver step, so
diffusers' ``FlowMatchEulerDiscreteScheduler`` (``x + (sigma_next - sigma) * v``, deterministic)
does not give it; a small dataclass does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def shift_sigma(sigma, shift: float):
    """Wan's timestep shift ``sigma' = shift * sigma / (1 + (shift - 1) * sigma)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass(frozen=True)
class FewStepFlowSchedule:
    """``steps`` are timesteps in ``[0, num_train_timesteps]`` before the shift; the published
    Reward Forcing / Self Forcing generator uses ``(1000, 750, 500, 250)`` with shift 5, i.e.
    ``sigmas ~ (1.0, 0.9375, 0.8333, 0.625)`` and model timesteps ``1000 * sigmas``."""
    steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    num_train_timesteps: int = 1000

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
        return tuple(shift_sigma(s / self.num_train_timesteps, self.shift) for s in self.steps)

    @property
    def timesteps(self) -> tuple[float, ...]:
        """The warped timesteps the model's time embedding receives (1000, 937.5, 833.3, 625)."""
        return tuple(s * self.num_train_timesteps for s in self.sigmas)

    def __len__(self) -> int:
        return len(self.steps)

    def grid_marks(self, num_steps: int) -> list[int]:
        """The indices of the student's steps on a ``num_steps``-step grid uniform in the
        un-shifted time (the teacher's ODE in the ODE-init stage); ValueError when one is off it."""
        n, total = num_steps, self.num_train_timesteps
        marks = [round((1 - s / total) * n) for s in self.steps]
        if any(abs(m / n - (1 - s / total)) > 1e-9 for m, s in zip(marks, self.steps)):
            raise ValueError(f"the student's steps {self.steps} are not on a {n}-step grid "
                             "(ode_steps must put each of them on a grid point)")
        return marks

    @staticmethod
    def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
        """``x0_hat = x_t - sigma * v``."""
        return x_t - sigma * velocity

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """``x_t = (1 - sigma) * x0 + sigma * noise``."""
        return (1 - sigma) * x0 + sigma * noise
