"""The training loop the stages share (:mod:`.teacher`, :mod:`.ode_init`, :mod:`.redmd`),
nanoGPT-style: one loop, explicit state, nothing hidden. A stage defines ``_step`` (one step's
work, returning its log values) and the ``_modules`` / ``_optimizers`` it checkpoints
(:mod:`.checkpoints`).

Distributed: run under ``torchrun``; gradients are averaged with an all-reduce after backward (the
rollout calls ``forward_chunk``, which DDP's forward hooks would not see), or, with ``fsdp: true``,
the trained models (and the EMA) are sharded with FSDP2 (:mod:`.distributed`), which
reduce-scatters them itself; frozen models (the teacher) stay replicated on every rank. Every rank
draws the random numbers (prompts, noise, timesteps) of the whole global batch from the same
streams and keeps its own slice: ``N`` ranks x batch ``B`` then compute what one process with
batch ``N B`` does, and one checkpoint's RNG states resume every rank exactly. Only rank 0 logs
and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..models.causal_wan import CausalWanModel
from ..scheduler import FewStepFlowSchedule
from . import checkpoints
from .config import TrainConfig
from .distributed import (
    full_optimizer_state_dict,
    full_state_dict,
    is_sharded,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    shard_model,
)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainLoop:
    """What the stages share: global-batch random streams, autocast, gradient all-reduce and
    clipping, the loop, jsonl logging and atomic checkpoints with exact resume. A stage defines
    ``_step`` (one step's work, returning its log values) and the ``_modules`` / ``_optimizers``
    it checkpoints."""

    def __init__(self, cfg: TrainConfig, device: torch.device, text_encoder, prompts: Sequence[str] | None):
        if prompts is not None and not prompts:
            raise ValueError("no training prompts")
        self.cfg, self.device, (self.rank, self.world) = cfg, device, _world()
        self.text_encoder = text_encoder
        self.prompts = None if prompts is None else list(prompts)  # None: the data brings its own
        self.schedule = FewStepFlowSchedule(cfg.steps, cfg.shift)
        # the attention the score models (teacher, critic) were trained with: block-causal chunks or None
        self.score_chunk = cfg.teacher_chunk_frames or None
        # Global-batch streams, the same on every rank (see the module doc).
        self.noise_rng = torch.Generator(device).manual_seed(cfg.seed)
        self.prompt_rng = random.Random(cfg.seed)
        with torch.no_grad():
            self.negative = text_encoder([cfg.negative_prompt]).to(device)
        self.step = 0
        self.out_dir = Path(cfg.out_dir)
        if cfg.cpu_bf16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            warnings.warn(
                "cpu_bf16: this CPU has no bf16 matmul units (AVX512-BF16/AMX); bf16 autocast "
                "will be slower than float32 here: set cpu_bf16: false",
                stacklevel=2,
            )

    def _modules(self) -> dict:
        raise NotImplementedError

    def _optimizers(self) -> dict:
        raise NotImplementedError

    def _step(self) -> dict:
        raise NotImplementedError

    def train_step(self) -> dict:
        """One training step; returns its log record."""
        start = time.perf_counter()
        self._schedule_lr()
        logs = {"step": self.step, **self._step()}
        self.step += 1
        logs["seconds"] = time.perf_counter() - start
        return logs

    # ------------------------------------------------------------------ pieces
    def _schedule_lr(self) -> None:
        """Sets every optimizer's rate to the one it was built with (``defaults``, which loading a
        checkpoint leaves alone; one rate per optimizer) times :meth:`TrainConfig.lr_scale` at this
        step. Nothing is added to the param groups: FSDP2's sharded optimizer checkpoints match
        their keys exactly."""
        scale = self.cfg.lr_scale(self.step)
        for opt in self._optimizers().values():
            for group in opt.param_groups:
                group["lr"] = opt.defaults["lr"] * scale

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.device.type == "cpu" and self.cfg.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _mine(self, x):
        """This rank's slice of a global-batch draw."""
        b = self.cfg.batch_size
        return x[self.rank * b : (self.rank + 1) * b]

    def _randn(self, shape) -> torch.Tensor:
        full = torch.randn((shape[0] * self.world, *shape[1:]), generator=self.noise_rng, device=self.device)
        return self._mine(full)

    def _batch_text(self) -> torch.Tensor:
        assert self.prompts is not None  # set when the data brings no prompts of its own
        prompts = self._mine([self.prompt_rng.choice(self.prompts) for _ in range(self.cfg.batch_size * self.world)])
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
            warnings.warn(
                "an x0-predicting model trained with loss_space: velocity weights noise level "
                "sigma by 1/sigma^2 and leaves high noise levels untrained; set loss_space: x0",
                stacklevel=3,
            )

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
        every RNG state. FSDP2-sharded models and their optimizer states are gathered to full ones
        (the same keys): then a collective, complete on rank 0 only."""
        return {
            "version": checkpoints.VERSION,
            "stage": type(self).__name__,
            "config": self.cfg.to_dict(),
            "world": self.world,
            "step": self.step,
            **{k: full_state_dict(m) for k, m in self._modules().items()},
            "model_configs": {k: dataclasses.asdict(m.config) for k, m in self._modules().items()},
            "optimizers": {k: full_optimizer_state_dict(self._modules()[k], o) for k, o in self._optimizers().items()},
            "rng": checkpoints.rng_state(self.noise_rng, self.prompt_rng),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != checkpoints.VERSION or state.get("stage") != type(self).__name__:
            raise ValueError(
                f"not a {type(self).__name__} checkpoint (version {state.get('version')!r}, "
                f"stage {state.get('stage')!r})"
            )
        saved = dict(state["config"])  # per-rank batch: compare the global batch
        saved["batch_size"] = saved["batch_size"] * state.get("world", 1) / self.world
        changed = self.cfg.resume_changes(saved)
        if changed:
            raise ValueError(
                f"the checkpoint was written with other values of {changed}: resuming would "
                "not continue the same run (start a new out_dir, or restore them)"
            )
        for k, m in self._modules().items():
            load_full_state_dict(m, state[k])
        for k, o in self._optimizers().items():
            load_full_optimizer_state_dict(self._modules()[k], o, state["optimizers"][k])
        self.step = state["step"]
        checkpoints.set_rng_state(state["rng"], self.noise_rng, self.prompt_rng)

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``out_dir/checkpoint-<step>.pt`` atomically and keeps the newest
        ``keep_checkpoints`` (:func:`.checkpoints.write_checkpoint`). With FSDP2 every rank must call
        it (gathering the sharded state is collective)."""
        if self.rank != 0 and not any(is_sharded(m) for m in self._modules().values()):
            return None
        state = self.state_dict()
        if self.rank != 0:
            return None
        return checkpoints.write_checkpoint(state, self.out_dir, self.cfg.keep_checkpoints)

    def resume(self, path=None) -> Path | None:
        """Loads ``path`` or the newest checkpoint in ``out_dir`` (None when there is none)."""
        path = Path(path) if path is not None else checkpoints.latest_checkpoint(self.out_dir)
        if path is None:
            return None
        state = checkpoints.read_checkpoint(path)
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except (KeyError, IndexError, AttributeError, RuntimeError) as e:
            raise ValueError(f"{path}: not a checkpoint of this trainer ({type(e).__name__}: {e})") from None
        if self.rank == 0:
            checkpoints.truncate_log(self.out_dir / "log.jsonl", self.step)
        return path
