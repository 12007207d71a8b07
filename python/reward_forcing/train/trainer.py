"""The Re-DMD trainer (docs/design.md §5), nanoGPT-style: one loop, explicit state, nothing hidden, the
ODE-init stage before it (:class:`ODEInitTrainer`); the world model's teacher stage, which shares
the loop, is in :mod:`.teacher`.

Each trainer step is a critic step; every ``critic_ratio``-th step first makes a generator step
(Self Forcing's ``dfake_gen_update_ratio``). Both draw their samples with a self-forcing
:func:`~reward_forcing.train.rollout.rollout` of the causal generator.

Distributed: run under ``torchrun``; gradients are averaged with an all-reduce after backward (the
rollout calls ``forward_chunk``, which DDP's forward hooks would not see), or, with ``fsdp: true``,
the trained models (and the EMA) are sharded with FSDP2 (:mod:`.distributed`), which
reduce-scatters them itself; the frozen teacher stays replicated on every rank. Reward weights are
normalised over the global batch, and the exit step is the same on every rank by construction.
Every rank draws the random numbers (prompts, noise, timesteps) of the whole global batch from
the same streams and keeps its own slice: ``N`` ranks x batch ``B`` then compute what one process
with batch ``N B`` does, and one checkpoint's RNG states resume every rank exactly. Only rank 0
logs and writes checkpoints.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..files import atomic_output
from ..models.causal_wan import CausalWanModel
from ..scheduler import FewStepFlowSchedule, add_noise, predict_x0, sigma_of, teacher_trajectory
from ..scheduler import cfg as flow_cfg
from . import dmd
from .config import TrainConfig
from .curves import read_log
from .distributed import (full_optimizer_state_dict, full_state_dict, is_sharded,
                          load_full_optimizer_state_dict, load_full_state_dict, shard_model)
from .rewards import Reward
from .rollout import draw_exit_step, rollout

_CHECKPOINT_VERSION = 1


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _TrainLoop:
    """What the stages share: global-batch random streams, autocast, gradient all-reduce and
    clipping, the loop, jsonl logging and atomic checkpoints with exact resume. A stage defines
    ``_step`` (one step's work, returning its log values) and the ``_modules`` / ``_optimizers``
    it checkpoints."""

    def __init__(self, cfg: TrainConfig, device: torch.device, text_encoder,
                 prompts: Sequence[str] | None):
        if prompts is not None and not prompts:
            raise ValueError("no training prompts")
        self.cfg, self.device, (self.rank, self.world) = cfg, device, _world()
        self.text_encoder = text_encoder
        self.prompts = None if prompts is None else list(prompts)  # None: the data brings its own
        self.schedule = FewStepFlowSchedule(cfg.steps, cfg.shift)
        # Global-batch streams, the same on every rank (see the module doc).
        self.noise_rng = torch.Generator(device).manual_seed(cfg.seed)
        self.prompt_rng = random.Random(cfg.seed)
        with torch.no_grad():
            self.negative = text_encoder([cfg.negative_prompt]).to(device)
        self.step = 0
        self.out_dir = Path(cfg.out_dir)
        if cfg.cpu_bf16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            warnings.warn("cpu_bf16: this CPU has no bf16 matmul units (AVX512-BF16/AMX); bf16 autocast "
                          "will be slower than float32 here: set cpu_bf16: false", stacklevel=2)

    def _modules(self) -> dict:
        raise NotImplementedError

    def _optimizers(self) -> dict:
        raise NotImplementedError

    def _step(self) -> dict:
        raise NotImplementedError

    def train_step(self) -> dict:
        """One training step; returns its log record."""
        start = time.perf_counter()
        logs = {"step": self.step, **self._step()}
        self.step += 1
        logs["seconds"] = time.perf_counter() - start
        return logs

    # ------------------------------------------------------------------ pieces
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.device.type == "cpu" and self.cfg.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _mine(self, x):
        """This rank's slice of a global-batch draw."""
        b = self.cfg.batch_size
        return x[self.rank * b:(self.rank + 1) * b]

    def _randn(self, shape) -> torch.Tensor:
        full = torch.randn((shape[0] * self.world, *shape[1:]), generator=self.noise_rng, device=self.device)
        return self._mine(full)

    def _batch_text(self) -> torch.Tensor:
        assert self.prompts is not None  # set when the data brings no prompts of its own
        prompts = self._mine([self.prompt_rng.choice(self.prompts)
                              for _ in range(self.cfg.batch_size * self.world)])
        with torch.no_grad():
            return self.text_encoder(prompts).to(self.device)

    def _shard(self, *models) -> None:
        """With ``fsdp: true`` and several ranks, shards ``models`` in place with FSDP2 (one unit per
        block, then the root; :func:`.distributed.shard_model`). Call before building optimizers.
        An EMA copy is sharded like its model, so its update is a shard-wise lerp of matching
        local shards with no communication and a sharded EMA costs ``1 / world`` of its memory;
        checkpoints gather it like the other models. Frozen models (the teacher) are not passed:
        they stay replicated on every rank, with no gradients to reduce."""
        if self.cfg.fsdp and self.world > 1:
            for model in models:
                shard_model(model)

    @torch.no_grad()
    def _update_ema(self, ema, model) -> None:
        """``ema``: a plain copy of ``model`` before trainer step ``ema_start`` (Self Forcing's
        counter, which counts critic steps too), then ``ema = decay ema + (1 - decay) param``."""
        decay = self.cfg.ema_decay if self.step >= self.cfg.ema_start else 0.0
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - decay)

    def _loss_sigma(self, sigma):
        """The ``sigma`` argument of :func:`dmd.denoising_loss` for the configured ``loss_space``."""
        return sigma if self.cfg.loss_space == "x0" else None

    def _check_loss_space(self, model: CausalWanModel) -> None:
        if model.config.prediction == "x0" and self.cfg.loss_space != "x0":
            warnings.warn("an x0-predicting model trained with loss_space: velocity weights noise level "
                          "sigma by 1/sigma^2 and leaves high noise levels untrained; set loss_space: x0",
                          stacklevel=3)

    def _sync_and_clip(self, model) -> float:
        """Averages gradients over the ranks (an all-reduce; FSDP2-sharded models have
        reduce-scattered them already) and clips them to the global norm, which
        ``clip_grad_norm_`` computes over DTensor shards too."""
        params = [p for p in model.parameters() if p.grad is not None]
        if self.world > 1 and not is_sharded(model):
            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= self.world
        return float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))

    # ------------------------------------------------------------------ loop and logs
    def train(self, progress: bool = False) -> None:
        """Runs to ``max_steps`` (or for ``max_minutes``), logging to ``out_dir/log.jsonl`` (and
        TensorBoard when it is installed: :meth:`log`) and checkpointing every ``save_every``
        steps and at the end."""
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not progress or self.rank != 0)
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
        while self.step < cfg.max_steps:
            logs = self.train_step()
            bar.update(1)
            if self.rank == 0 and logs["step"] % cfg.log_every == 0:
                self.log(logs)
            out_of_time = deadline is not None and self._all_agree(time.monotonic() > deadline)
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                break
        bar.close()
        self.close_logs()

    def _all_agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (so all stop at the same step)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(value, 0)
        return bool(value.item())

    def log(self, record: dict) -> None:
        """Appends ``record`` to ``out_dir/log.jsonl``, and its numbers to TensorBoard
        (``out_dir/tensorboard``, at ``record["step"]``) when ``torch.utils.tensorboard`` imports."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, record["step"])

    def _tensorboard(self):
        """The run's SummaryWriter, created on first use; None when TensorBoard is not installed."""
        if not hasattr(self, "_tb_writer"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb_writer = None
            else:
                self._tb_writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._tb_writer

    def close_logs(self) -> None:
        """Flushes and closes the TensorBoard writer (a later :meth:`log` opens a new one)."""
        writer = getattr(self, "_tb_writer", None)
        if writer is not None:
            writer.close()
        self.__dict__.pop("_tb_writer", None)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Model state dicts at the top level (``generator``, ``generator_ema``, ``critic``: the
        layout :func:`reward_forcing.models.loading.load_causal_wan` reads), optimizers, step and
        every RNG state; only tensors and plain Python values (loads with ``weights_only=True``).
        FSDP2-sharded models and their optimizer states are gathered to full ones (the same keys):
        then a collective, complete on rank 0 only."""
        numpy_state: Any = np.random.get_state()  # the legacy tuple
        name, keys, pos, has_gauss, cached = numpy_state
        return {
            "version": _CHECKPOINT_VERSION, "stage": type(self).__name__, "config": self.cfg.to_dict(),
            "world": self.world, "step": self.step,
            **{k: full_state_dict(m) for k, m in self._modules().items()},
            "model_configs": {k: dataclasses.asdict(m.config) for k, m in self._modules().items()},
            "optimizers": {k: full_optimizer_state_dict(self._modules()[k], o)
                           for k, o in self._optimizers().items()},
            "rng": {"noise": self.noise_rng.get_state(), "prompt": self.prompt_rng.getstate(),
                    "torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != _CHECKPOINT_VERSION or state.get("stage") != type(self).__name__:
            raise ValueError(f"not a {type(self).__name__} checkpoint (version {state.get('version')!r}, "
                             f"stage {state.get('stage')!r})")
        saved = dict(state["config"])  # per-rank batch: compare the global batch
        saved["batch_size"] = saved["batch_size"] * state.get("world", 1) / self.world
        changed = self.cfg.resume_changes(saved)
        if changed:
            raise ValueError(f"the checkpoint was written with other values of {changed}: resuming would "
                             "not continue the same run (start a new out_dir, or restore them)")
        for k, m in self._modules().items():
            load_full_state_dict(m, state[k])
        for k, o in self._optimizers().items():
            load_full_optimizer_state_dict(self._modules()[k], o, state["optimizers"][k])
        self.step = state["step"]
        rng = state["rng"]
        self.noise_rng.set_state(rng["noise"])
        self.prompt_rng.setstate(rng["prompt"])
        torch.set_rng_state(rng["torch"])
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``out_dir/checkpoint-<step>.pt`` atomically (:mod:`reward_forcing.files`:
        a ``.part`` file, fsync, rename; removed on errors and SIGTERM/SIGHUP) and keeps the newest
        ``keep_checkpoints``. With FSDP2 every rank must call it (gathering the sharded state is collective)."""
        if self.rank != 0 and not any(is_sharded(m) for m in self._modules().values()):
            return None
        state = self.state_dict()
        if self.rank != 0:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"checkpoint-{self.step:08d}.pt"
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        for old in sorted(self.out_dir.glob("checkpoint-*.pt"))[:-self.cfg.keep_checkpoints]:
            old.unlink()
        return path

    def resume(self, path=None) -> Path | None:
        """Loads ``path`` or the newest checkpoint in ``out_dir`` (None when there is none)."""
        path = Path(path) if path is not None else latest_checkpoint(self.out_dir)
        if path is None:
            return None
        try:  # truncated, corrupt or foreign files: zip, unpickling (weights_only) errors
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a checkpoint of this trainer (a {type(state).__name__})")
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except (KeyError, IndexError, AttributeError, RuntimeError) as e:
            raise ValueError(f"{path}: not a checkpoint of this trainer "
                             f"({type(e).__name__}: {e})") from None
        self._truncate_log()
        return path

    def _truncate_log(self) -> None:
        """Drops the log records of steps after the checkpoint (an interrupted run logged them;
        the resumed run logs them again)."""
        log = self.out_dir / "log.jsonl"
        if self.rank != 0 or not log.is_file():
            return
        kept = [r for r in read_log(log) if r.get("step", float("inf")) < self.step]
        with atomic_output(log) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))


class ReDMDTrainer(_TrainLoop):
    """``generator`` the causal student (trained, and its EMA copy); ``critic`` the fake score
    (trained); ``teacher`` the frozen real score; ``text_encoder(prompts) -> [B, L, text_dim]``;
    ``prompts`` the training prompts; ``reward`` and ``decode`` (latents -> videos) are needed
    when the weighting is not ``"none"``."""

    def __init__(self, cfg: TrainConfig, generator: CausalWanModel, critic: CausalWanModel,
                 teacher: CausalWanModel, text_encoder, prompts: Sequence[str], *,
                 reward: Reward | None = None, decode: Callable | None = None):
        if cfg.weighting != "none" and (reward is None or decode is None):
            raise ValueError(f"weighting={cfg.weighting!r} needs a reward and a decoder")
        super().__init__(cfg, generator.device, text_encoder, prompts)
        self.generator, self.critic = generator.train(), critic.train()
        self.teacher = teacher.eval().requires_grad_(False)
        self.ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self._check_loss_space(critic)
        if cfg.normalize_weights and cfg.weighting != "none" and cfg.batch_size * self.world == 1:
            warnings.warn("normalize_weights over a global micro-batch of one sample makes every weight 1: "
                          f"weighting {cfg.weighting!r} would train plain DMD", stacklevel=2)
        self._shard(generator, critic, self.ema)
        self.reward, self.decode = reward, decode
        mc = generator.config
        _, ph, pw = mc.patch_size
        self.shape = (cfg.batch_size, mc.in_dim, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
        self.cache = generator.new_cache(cfg.batch_size, cfg.latent_height // ph, cfg.latent_width // pw,
                                         sink_frames=cfg.sink_frames, window_frames=cfg.window_frames,
                                         chunk_frames=cfg.chunk_frames, alpha=cfg.alpha,
                                         dtype=torch.float32)
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
        return rollout(self.generator, self.generator.encode_text(cond), noise, self.cache,
                       exit_step, self.schedule, self._randn)

    def denoised_to(self, exit_step: int) -> int:
        """The un-shifted timestep exit step ``exit_step`` denoised to: the next student step, 0
        after the last (Self Forcing's ``denoised_timestep_to``, the ``ts_schedule`` lower bound)."""
        steps = self.schedule.steps
        return int(round(steps[exit_step + 1])) if exit_step + 1 < len(steps) else 0

    def _noised(self, x0: torch.Tensor):
        """``x0`` noised at timesteps from the published draw; with ``ts_schedule`` the draw
        starts at the last :meth:`_sample`'s :meth:`denoised_to`."""
        cfg = self.cfg
        t = self._mine(dmd.sample_timesteps(x0.shape[0] * self.world, shift=cfg.shift, min_t=cfg.min_t,
                                            max_t=cfg.max_t, low=self._low, generator=self.noise_rng,
                                            device=self.device))
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
                weights = dmd.reward_weights(r, cfg.beta, normalize=cfg.normalize_weights,
                                             clip=cfg.weight_clip)
            with torch.no_grad(), self._autocast():
                x_t, _, t, sigma = self._noised(x0)
                uncond = self.negative.expand(len(cond), -1, -1)
                real_cond, real_uncond = (predict_x0(x_t, self.teacher(x_t, t, c).float(), sigma)
                                          for c in (cond, uncond))
                x_real = flow_cfg(real_cond, real_uncond, cfg.guidance_scale)
                x_fake = predict_x0(x_t, self.critic(x_t, t, cond).float(), sigma)
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
                velocity = self.critic(x_t, t, cond)
            loss = dmd.weighted_mean(dmd.denoising_loss(velocity, noise, x0, self._loss_sigma(sigma)),
                                     weights)
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


# ---------------------------------------------------------------------------------------- ODE init
def ode_regression_loss(student: CausalWanModel, trajectory: torch.Tensor, cond,
                        step_index: torch.Tensor, schedule: FewStepFlowSchedule,
                        chunk_frames: int) -> torch.Tensor:
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


class ODEInitTrainer(_TrainLoop):
    """The stage before Re-DMD: regress the causal ``student`` onto ``teacher`` ODE trajectories
    (generated on the fly, CFG with the negative prompt). Its checkpoints hold the student as
    ``generator``: give one as the DMD stage's ``generator``."""

    def __init__(self, cfg: TrainConfig, student: CausalWanModel, teacher: CausalWanModel,
                 text_encoder, prompts: Sequence[str]):
        super().__init__(cfg, student.device, text_encoder, prompts)
        self.schedule.grid_marks(cfg.ode_steps)  # an incompatible ode_steps fails here, not at step 1
        self.student = student.train()
        self.teacher = teacher.eval().requires_grad_(False)
        self._shard(student)
        self.opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr_generator, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay)
        self.shape = (cfg.batch_size, student.config.in_dim, cfg.latent_frames, cfg.latent_height,
                      cfg.latent_width)

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
                trajectory = teacher_trajectory(self.teacher, cond, uncond, self._randn(self.shape),
                                                self.schedule, cfg.guidance_scale, cfg.ode_steps)
                index = self._mine(torch.randint(len(self.schedule), (cfg.batch_size * self.world, chunks),
                                                 generator=self.noise_rng, device=self.device))
                loss = ode_regression_loss(self.student, trajectory, cond, index, self.schedule,
                                           cfg.chunk_frames)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.detach())
        grad_norm = self._sync_and_clip(self.student)
        self.opt.step()
        return {"ode_loss": float(torch.stack(losses).mean()), "grad_norm": grad_norm}


def latest_checkpoint(out_dir) -> Path | None:
    found = sorted(Path(out_dir).glob("checkpoint-*.pt"))
    return found[-1] if found else None
