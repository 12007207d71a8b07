"""The teacher stage of the embedded world model: a bidirectional Wan teacher trained
by flow matching on procedural world clips, when there is no pretrained teacher to distil from.
It shares the trainer loop (logging, checkpoints, exact resume, distributed) with the other stages."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..models.causal_wan import CausalWanModel
from ..scheduler import broadcast_sigma, shift_sigma, timestep_of
from . import dmd
from .config import TrainConfig
from .loop import TrainLoop
from .world_probe import WorldProbe


def object_weight_scale(sigma: torch.Tensor, until: float) -> torch.Tensor:
    """1 up to noise level ``until``, then falling linearly to 0 at noise 1."""
    return ((1 - sigma) / (1 - until)).clamp(max=1) if until < 1 else torch.ones_like(sigma)


def frame_difference_loss(
    velocity: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, temporal: int
) -> torch.Tensor:
    """Per-sample mean squared error ``[B]`` of the x0 prediction's differences between consecutive
    video frames, the latents in the pixel codec's layout (``temporal`` frames per latent frame,
    outermost in the channels). Linear in the x0 error, so the optimum stays where the x0 loss has
    it (E[x0 diff | x_t] is the diff of E[x0 | x_t]); what it adds is weight on the error that
    changes from frame to frame, i.e. objects that jump instead of moving."""
    err = broadcast_sigma(sigma, x0) * (velocity.float() - (noise - x0.detach()).float())  # = x0 - x0_hat
    b, c, f, h, w = err.shape
    frames = (
        err.reshape(b, temporal, c // temporal, f, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c // temporal, -1, h, w)
    )
    return frames.diff(dim=2).pow(2).mean(dim=(1, 2, 3, 4))


class TeacherTrainer(TrainLoop):
    """The stage before ODE init when there is no pretrained teacher (the embedded world model):
    flow-matching training of the bidirectional ``model`` on data clips. ``data.sample(n, rng)`` returns
    (clean latents ``[n, C, F, H, W]``, prompts, object masks in the latent layout:
    :class:`~.world_data.Clips`), the masks weighting the loss by ``1 + object_weight`` (decayed
    above noise level ``object_weight_until``), plus ``motion_weight`` times
    :func:`frame_difference_loss`; a prompt is replaced by the negative prompt with
    probability ``cond_dropout``, so the teacher also
    learns the unconditional branch that classifier-free guidance (and DMD's real score) uses.
    Noise levels are ``shift_sigma(u, shift)``, ``u ~ U(0, 1)``, as Wan trains (per chunk after a clean
    prefix for a block-causal teacher, :meth:`_sigmas`). Its checkpoints
    hold the model as ``generator`` and its EMA as ``generator_ema`` (what the loader prefers)."""

    def __init__(self, cfg: TrainConfig, model: CausalWanModel, text_encoder, data):
        super().__init__(cfg, model.device, text_encoder, None)
        self.model, self.data = model.train(), data
        self._check_loss_space(model)
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self._shard(model, self.ema)
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr_generator, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.data_rng = np.random.default_rng(cfg.seed)
        self._probe = WorldProbe(data, chunk_frames=self.score_chunk) if cfg.probe_every else None

    def _modules(self) -> dict:
        return {"generator": self.model, "generator_ema": self.ema}

    def _optimizers(self) -> dict:
        return {"generator": self.opt}

    def state_dict(self) -> dict:
        return super().state_dict() | {"data_rng": self.data_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.data_rng.bit_generator.state = state["data_rng"]

    def _sigmas(self, batch: int, frames: int) -> torch.Tensor:
        """This rank's noise levels: ``shift_sigma(u, shift)``, ``u ~ U(0, 1)``, one per sample ``[B]``
        (bidirectional) or, block-causal, one per chunk after a clean prefix of a uniformly drawn
        number of chunks ``[B, F]`` (diffusion forcing with the context a streaming cache holds)."""
        k, n = self.cfg.teacher_chunk_frames, batch * self.world
        if not k:
            return shift_sigma(self._mine(torch.rand(n, generator=self.noise_rng, device=self.device)), self.cfg.shift)
        chunks = -(-frames // k)
        u = torch.rand(n, chunks, generator=self.noise_rng, device=self.device)
        clean = torch.randint(0, chunks, (n, 1), generator=self.noise_rng, device=self.device)
        sigma = torch.where(torch.arange(chunks, device=self.device) < clean, 0.0, shift_sigma(u, self.cfg.shift))
        return self._mine(sigma.repeat_interleave(k, dim=1)[:, :frames])

    def _step(self) -> dict:
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        losses = []
        for _ in range(cfg.grad_accum):
            x0, prompts, masks = self.data.sample(cfg.batch_size * self.world, self.data_rng)
            x0, prompts = self._mine(x0).to(self.device), self._mine(prompts)
            drop = self._mine(self.data_rng.random(len(prompts) * self.world) < cfg.cond_dropout)
            with torch.no_grad():
                cond = self.text_encoder([cfg.negative_prompt if d else p for p, d in zip(prompts, drop)])
            sigma = self._sigmas(x0.shape[0], x0.shape[2])
            weight = None
            if cfg.object_weight:
                scale = object_weight_scale(sigma, cfg.object_weight_until) * cfg.object_weight
                weight = 1 + broadcast_sigma(scale, x0) * self._mine(masks).to(self.device)
            noise = self._randn(x0.shape)
            with self._autocast():
                velocity = self.model(
                    dmd.add_noise(x0, noise, sigma),
                    timestep_of(sigma),
                    cond.to(self.device),
                    chunk_frames=self.score_chunk,
                )
            loss = dmd.denoising_loss(velocity, noise, x0, self._loss_sigma(sigma), weight).mean()
            if cfg.motion_weight:
                temporal = self.data.codec.temporal_scale
                loss = loss + cfg.motion_weight * frame_difference_loss(velocity, noise, x0, sigma, temporal).mean()
            (loss / cfg.grad_accum).backward()
            losses.append(loss.detach())
        grad_norm = self._sync_and_clip(self.model)
        self.opt.step()
        self._update_ema(self.ema, self.model)
        logs = {"loss": float(torch.stack(losses).mean()), "grad_norm": grad_norm}
        if self._probe is not None and (self.step + 1) % cfg.probe_every == 0:
            logs |= self._probe(self.ema, self.text_encoder)
        return logs
