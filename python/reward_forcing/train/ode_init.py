"""The ODE-init stage (Self Forcing): the causal student regressed onto the teacher's few-step ODE
trajectories, the initialisation the Re-DMD stage (:mod:`.redmd`) starts from."""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.causal_wan import CausalWanModel
from ..scheduler import FewStepFlowSchedule, predict_x0, teacher_trajectory
from .config import TrainConfig
from .loop import TrainLoop


def ode_regression_loss(
    student: CausalWanModel,
    trajectory: torch.Tensor,
    cond,
    step_index: torch.Tensor,
    schedule: FewStepFlowSchedule,
    chunk_frames: int,
) -> torch.Tensor:
    """Self Forcing's ODE init: each chunk of each sample is given the trajectory's state at one
    student step (``step_index [B, chunks]``), the student (block-causal, all chunks at once)
    predicts the clean video, and the loss is its MSE to the trajectory's end."""
    b, k1, c, f, h, w = trajectory.shape
    per_frame = step_index.repeat_interleave(chunk_frames, 1)  # [B, F]
    frames = trajectory.permute(0, 3, 1, 2, 4, 5)  # [B, F, K+1, C, H, W]
    x_t = frames[torch.arange(b)[:, None], torch.arange(f)[None], per_frame].permute(0, 2, 1, 3, 4)
    t = torch.tensor(schedule.timesteps, device=x_t.device)[per_frame]
    sigma = torch.tensor(schedule.sigmas, device=x_t.device)[per_frame]
    v = student(x_t, t, cond, chunk_frames=chunk_frames)
    x0 = predict_x0(x_t, v.float(), sigma)  # sigma [B, F]: one per latent frame
    return F.mse_loss(x0, trajectory[:, -1])


class ODEInitTrainer(TrainLoop):
    """The stage before Re-DMD: regress the causal ``student`` onto ``teacher`` ODE trajectories
    (generated on the fly, CFG with the negative prompt). Its checkpoints hold the student as
    ``generator``: give one as the DMD stage's ``generator``."""

    def __init__(
        self, cfg: TrainConfig, student: CausalWanModel, teacher: CausalWanModel, text_encoder, prompts: Sequence[str]
    ):
        super().__init__(cfg, student.device, text_encoder, prompts)
        self.schedule.grid_marks(cfg.ode_steps)  # an incompatible ode_steps fails here, not at step 1
        self.student = student.train()
        self.teacher = teacher.eval().requires_grad_(False)
        self._shard(student)
        self.opt = torch.optim.AdamW(
            student.parameters(), lr=cfg.lr_generator, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.shape = (cfg.batch_size, student.config.in_dim, cfg.latent_frames, cfg.latent_height, cfg.latent_width)

    def _modules(self) -> dict:
        return {"generator": self.student}

    def _optimizers(self) -> dict:
        return {"generator": self.opt}

    def _step(self) -> dict:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        losses = []
        chunks = cfg.latent_frames // cfg.chunk_frames
        for _ in range(cfg.grad_accum):
            cond = self._batch_text()
            with self._autocast():
                uncond = self.negative.expand(len(cond), -1, -1)
                trajectory = teacher_trajectory(
                    functools.partial(self.teacher, chunk_frames=self.score_chunk),
                    cond,
                    uncond,
                    self._randn(self.shape),
                    self.schedule,
                    cfg.guidance_scale,
                    cfg.ode_steps,
                    self.score_chunk,
                )
                index = self._mine(
                    torch.randint(
                        len(self.schedule),
                        (cfg.batch_size * self.world, chunks),
                        generator=self.noise_rng,
                        device=self.device,
                    )
                )
                loss = ode_regression_loss(self.student, trajectory, cond, index, self.schedule, cfg.chunk_frames)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.detach())
        grad_norm = self._sync_and_clip(self.student)
        self.opt.step()
        return {"ode_loss": float(torch.stack(losses).mean()), "grad_norm": grad_norm}
