"""The Re-DMD stage (docs/design.md §5): distribution-matching distillation of the causal student
against a frozen teacher, with the reward weighting on the generator side (Re-DMD) or the critic
side (the tilted critic), or none (DMD).

Each trainer step is a critic step; every ``critic_ratio``-th step first makes a generator step
(Self Forcing's ``dfake_gen_update_ratio``). Both draw their samples with a self-forcing
:func:`~reward_forcing.train.rollout.rollout` of the causal generator. Reward weights are
normalised over the global batch, and the exit step is the same on every rank by construction.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Sequence

import torch

from ..models.causal_wan import CausalWanModel
from ..scheduler import add_noise, predict_x0, sigma_of
from ..scheduler import cfg as flow_cfg
from . import dmd
from .config import TrainConfig
from .loop import TrainLoop
from .rewards import Reward
from .rollout import draw_exit_step, rollout


class ReDMDTrainer(TrainLoop):
    """``generator`` the causal student (trained, and its EMA copy); ``critic`` the fake score
    (trained); ``teacher`` the frozen real score; ``text_encoder(prompts) -> [B, L, text_dim]``;
    ``prompts`` the training prompts; ``reward`` and ``decode`` (latents -> videos) are needed
    when the weighting is not ``"none"``."""

    def __init__(
        self,
        cfg: TrainConfig,
        generator: CausalWanModel,
        critic: CausalWanModel,
        teacher: CausalWanModel,
        text_encoder,
        prompts: Sequence[str],
        *,
        reward: Reward | None = None,
        decode: Callable | None = None,
    ):
        if cfg.weighting != "none" and (reward is None or decode is None):
            raise ValueError(f"weighting={cfg.weighting!r} needs a reward and a decoder")
        super().__init__(cfg, generator.device, text_encoder, prompts)
        self.generator, self.critic = generator.train(), critic.train()
        self.teacher = teacher.eval().requires_grad_(False)
        self.ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self._check_loss_space(critic)
        if cfg.normalize_weights and cfg.weighting != "none" and cfg.batch_size * self.world == 1:
            warnings.warn(
                "normalize_weights over a global micro-batch of one sample makes every weight 1: "
                f"weighting {cfg.weighting!r} would train plain DMD",
                stacklevel=2,
            )
        self._shard(generator, critic, self.ema)
        self.reward, self.decode = reward, decode
        mc = generator.config
        _, ph, pw = mc.patch_size
        self.shape = (cfg.batch_size, mc.in_dim, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
        self.cache = generator.new_cache(
            cfg.batch_size, cfg.latent_height // ph, cfg.latent_width // pw, cfg.cache_config()
        )
        adamw: dict[str, Any] = dict(betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_g = torch.optim.AdamW(generator.parameters(), lr=cfg.lr_generator, **adamw)
        self.opt_c = torch.optim.AdamW(critic.parameters(), lr=cfg.lr_critic, **adamw)
        self.generator_steps = 0
        self._low = 0  # the t draws' lower bound (ts_schedule), set by each rollout

    def _modules(self) -> dict:
        return {"generator": self.generator, "critic": self.critic, "generator_ema": self.ema}

    def _optimizers(self) -> dict:
        return {"generator": self.opt_g, "critic": self.opt_c}

    def state_dict(self) -> dict:
        return super().state_dict() | {"generator_steps": self.generator_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator_steps = state["generator_steps"]

    # ------------------------------------------------------------------ pieces
    def _sample(self, cond: torch.Tensor) -> torch.Tensor:
        """A self-forcing rollout: gradient through the exit step when grad is enabled. It runs in
        the parameters' dtype, outside autocast: under autocast the streaming path's q/k (RMSNorm
        with float32 weights) and v (a bf16 matmul) reach the cache op in different dtypes."""
        exit_step = draw_exit_step(self.step, len(self.schedule), self.cfg.seed)
        self._low = self.denoised_to(exit_step) if self.cfg.ts_schedule else 0
        noise = self._randn(self.shape)
        return rollout(
            self.generator, self.generator.encode_text(cond), noise, self.cache, exit_step, self.schedule, self._randn
        )

    def denoised_to(self, exit_step: int) -> int:
        """The un-shifted timestep exit step ``exit_step`` denoised to: the next student step, 0
        after the last (Self Forcing's ``denoised_timestep_to``, the ``ts_schedule`` lower bound)."""
        steps = self.schedule.steps
        return int(round(steps[exit_step + 1])) if exit_step + 1 < len(steps) else 0

    def _noised(self, x0: torch.Tensor):
        """``x0`` noised at timesteps from the published draw; with ``ts_schedule`` the draw
        starts at the last :meth:`_sample`'s :meth:`denoised_to`."""
        cfg = self.cfg
        t = self._mine(
            dmd.sample_timesteps(
                x0.shape[0] * self.world,
                shift=cfg.shift,
                min_t=cfg.min_t,
                max_t=cfg.max_t,
                low=self._low,
                generator=self.noise_rng,
                device=self.device,
            )
        )
        sigma = sigma_of(t, self.schedule.num_train_timesteps)
        noise = self._randn(x0.shape)
        return add_noise(x0.detach(), noise, sigma), noise, t, sigma

    def _rewards(self, x0: torch.Tensor) -> torch.Tensor:
        if self.reward is None or self.decode is None:
            raise RuntimeError("no reward: the weighting is 'none'")
        with torch.no_grad():
            return self.reward(self.decode(x0.detach())).to(self.device)

    # ------------------------------------------------------------------ steps
    def generator_step(self) -> dict:
        cfg, logs = self.cfg, {}
        self.opt_g.zero_grad(set_to_none=True)
        losses, rewards = [], []
        for _ in range(cfg.grad_accum):
            cond = self._batch_text()
            x0 = self._sample(cond)
            weights = None
            if cfg.weighting == "generator":
                r = self._rewards(x0)
                rewards.append(r)
                weights = dmd.reward_weights(r, cfg.beta, normalize=cfg.normalize_weights, clip=cfg.weight_clip)
            with torch.no_grad(), self._autocast():
                x_t, _, t, sigma = self._noised(x0)
                uncond = self.negative.expand(len(cond), -1, -1)
                real_cond, real_uncond = (
                    predict_x0(x_t, self.teacher(x_t, t, c, chunk_frames=self.score_chunk).float(), sigma)
                    for c in (cond, uncond)
                )
                x_real = flow_cfg(real_cond, real_uncond, cfg.guidance_scale)
                x_fake = predict_x0(x_t, self.critic(x_t, t, cond, chunk_frames=self.score_chunk).float(), sigma)
            grad = dmd.dmd_gradient(x0, x_real, x_fake)
            loss = dmd.weighted_mean(dmd.dmd_loss(x0, grad), weights)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.detach())
        logs["generator_grad_norm"] = self._sync_and_clip(self.generator)
        self.opt_g.step()
        self._update_ema(self.ema, self.generator)
        self.generator_steps += 1
        logs["generator_loss"] = float(torch.stack(losses).mean())
        if rewards:
            logs["reward"] = float(torch.cat(rewards).mean())
        return logs

    def critic_step(self) -> dict:
        cfg = self.cfg
        self.opt_c.zero_grad(set_to_none=True)
        losses = []
        for _ in range(cfg.grad_accum):
            cond = self._batch_text()
            with torch.no_grad():
                x0 = self._sample(cond)
            weights = None
            if cfg.weighting == "critic":
                weights = dmd.critic_weights(self._rewards(x0), cfg.beta, normalize=cfg.normalize_weights)
            x_t, noise, t, sigma = self._noised(x0)
            with self._autocast():
                velocity = self.critic(x_t, t, cond, chunk_frames=self.score_chunk)
            loss = dmd.weighted_mean(dmd.denoising_loss(velocity, noise, x0, self._loss_sigma(sigma)), weights)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.detach())
        grad_norm = self._sync_and_clip(self.critic)
        self.opt_c.step()
        return {"critic_loss": float(torch.stack(losses).mean()), "critic_grad_norm": grad_norm}

    def _step(self) -> dict:
        """A critic step, preceded by a generator step every ``critic_ratio`` steps."""
        logs = {}
        if self.step % self.cfg.critic_ratio == 0:
            logs.update(self.generator_step())
        logs.update(self.critic_step())
        return logs
