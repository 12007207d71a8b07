"""Trainer configuration: one dataclass, saved to and loaded from YAML (unknown keys are errors)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..cache import CacheConfig


# Fields a resumed run may change: where and how long it runs, not what it computes; and how the
# same arithmetic is carried out (FSDP sharding, CPU bf16 autocast), which changes the rounding only.
RESUMABLE_CHANGES = frozenset(
    {
        "out_dir",
        "max_steps",
        "max_minutes",
        "save_every",
        "log_every",
        "keep_checkpoints",
        "data_workers",
        "fsdp",
        "cpu_bf16",
        "probe_every",
    }
)


def lr_scale(step: int, warmup_steps: int, decay_steps: int, floor: float) -> float:
    """Linear warm-up over ``warmup_steps``, then (``decay_steps`` > 0) a cosine from 1 down to
    ``floor`` at step ``decay_steps``, and ``floor`` after it; 1 throughout without either."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not decay_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainConfig:
    # models and data: paths, or "tiny" / "world" for random WAN_TINY / WAN_WORLD models
    generator: str = "tiny"  # causal student checkpoint (ODE-init in the published recipe)
    critic: str | None = None  # fake-score init; default: the generator's checkpoint
    teacher: str = "tiny"  # real score (Wan-14B in the published run); trained by stage teacher
    text_encoder: str = "tiny"  # UMT5 folder, "minilm" (the packaged MiniLM) or "tiny" (hashed words)
    vae: str = "tiny"  # Wan VAE folder, "pixel" (the pixel codec) or "tiny" (random Wan VAE)
    prompts: str | None = None  # text file, one prompt per line; None: world prompts or a test prompt
    data: str | None = None  # "world": procedural clips (stage teacher) and their prompts
    cond_dropout: float = 0.1  # stage teacher: share of prompts replaced by the negative prompt
    data_workers: int = 0  # stage teacher on a CPU: processes rendering world clips (0: in
    # the loop); on a GPU the clips are rendered there
    # stage teacher: squared errors on object pixels count 1 + object_weight (objects are a small
    # share of a world frame: docs/design.md §10); 0 is the plain loss
    object_weight: float = 0.0
    # stage teacher: above this noise level the object weight falls linearly to 0 at noise 1, where
    # a mask-dependent weight biases the x0 optimum most (docs/design.md §10); 1.0 keeps it constant
    object_weight_until: float = 1.0
    # stage teacher: adds this times the squared error of the x0 prediction's frame-to-frame
    # differences (train/teacher.py: frame_difference_loss; same optimum, jitter weighted more)
    motion_weight: float = 0.0
    # the teacher's attention, in every stage: 0 bidirectional (stage teacher: all latent frames at one
    # noise level); k > 0 block-causal over chunks of k latent frames, trained diffusion-forcing style
    # (a clean prefix of chunks at t = 0, as in a streaming cache, then a noise level per chunk) and
    # sampled chunk by chunk (scheduler.teacher_trajectory); the critic, initialised from the teacher,
    # runs with the same mask
    teacher_chunk_frames: int = 0
    # stage teacher: train on this many fixed clips (the overfit diagnostic); 0 draws new ones
    fixed_clips: int = 0
    # stage teacher: share of world clips that start at frame 0, where the prompt's direction is what
    # the first frames show; the others start at a random frame (after bounces)
    start_at_zero: float = 0.5
    # stage teacher: share of the clips from frame 0 whose prompts also say where each object starts
    # ("a red ball on the left moving right"; world.with_places); stages ode-init and dmd with world
    # prompts: > 0 makes every prompt say it (always so for a layout model, WanConfig.layout)
    places: float = 0.0
    # stage teacher: placed objects start at their cell's one start (world.placed_start), so a placed
    # prompt fixes its clip's first frames; false: anywhere in the cell the scene drew
    snap_places: bool = False
    # stage teacher: every this many steps, log the EMA's x0 error on object and background pixels
    # per noise level, its colour binding and an 8-step sample probe (train/world_probe.py); 0: never
    probe_every: int = 0
    # where the teacher's and the critic's denoising loss is measured: "velocity" (Wan) or "x0"
    # (for x0-predicting models; train/dmd.py denoising_loss)
    loss_space: str = "velocity"
    negative_prompt: str = "static, blurry, low quality"  # CFG's unconditional branch
    out_dir: str = "runs/redmd"
    # sample geometry (latent frames; pixels are 8x the latent size for Wan's VAE)
    latent_frames: int = 21
    latent_height: int = 60
    latent_width: int = 104
    chunk_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 3
    alpha: float = 0.999
    steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    # DMD
    guidance_scale: float = 3.0
    ode_steps: int = 48  # the teacher's Euler steps in the ODE-init stage
    min_t: float = 20.0
    max_t: float = 980.0
    # Self Forcing's ts_schedule: the DMD and critic t draws start (before the shift) at the step
    # the rollout's exit step denoised to (the next student step; 0 after the last step)
    ts_schedule: bool = False
    # Re-DMD
    reward: str | None = "flow"  # "flow" (FlowMotionReward), a VLM reward folder (VLMReward) or None
    beta: float = 2.0
    # divide the weights (exp(beta r), or the tilted critic's exp(-beta r)) by their mean over the
    # global micro-batch: the step size stays put, the fixed point too; needs more than one sample
    normalize_weights: bool = False
    weight_clip: float | None = None
    # where exp(beta r) acts: "generator" (published Re-DMD: DMD loss weighted by exp(beta r)),
    # "critic" (tilted critic: critic loss weighted by exp(-beta r), docs/design.md §5) or "none" (DMD)
    weighting: str = "generator"
    # optimisation (published: docs/design.md §5)
    lr_generator: float = 2e-6
    lr_critic: float = 4e-7
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01
    # learning-rate schedule (every optimizer, by trainer step: lr_scale): a linear warm-up over the
    # first warmup_steps of a run (a run that starts from weights starts with a fresh optimizer),
    # then, when lr_decay_steps > 0, a cosine decay to lr_floor x the rate at step lr_decay_steps
    warmup_steps: int = 0
    lr_decay_steps: int = 0
    lr_floor: float = 0.1
    critic_ratio: int = 5  # critic steps per generator step
    batch_size: int = 1  # per rank
    grad_accum: int = 8
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    # Steps count trainer steps, as Self Forcing's counter does (each a critic step, every
    # critic_ratio-th also a generator step): 600 steps = 120 generator steps.
    ema_start: int = 200  # the EMA copies the generator before this step, averages after
    max_steps: int = 600
    # stop (with a checkpoint) after this many minutes of training, to resume later: runs that
    # must fit a time slot (a lent GPU, a CI job, a session)
    max_minutes: float | None = None
    bf16: bool = True  # autocast, on CUDA only
    # bf16 autocast on a CPU too: for CPUs with bf16 matmul units (AVX512-BF16, AMX), where it makes
    # a world-teacher step 1.75x faster (2-core AMD EPYC); off by default, plain CPUs get slower
    cpu_bf16: bool = False
    # under torchrun with several ranks: shard the trained models (and the EMA) with FSDP2 instead
    # of replicating them and all-reducing gradients (train/distributed.py); one process: ignored
    fsdp: bool = False
    seed: int = 0
    log_every: int = 1
    save_every: int = 100
    keep_checkpoints: int = 2

    def _check_types(self) -> None:
        """Each field's value has its annotated type (YAML gives strings, floats, lists, ...)."""
        for field in dataclasses.fields(self):
            value, kinds = getattr(self, field.name), [k.strip() for k in field.type.split("|")]
            if value is None and "None" in kinds:
                continue
            kind = kinds[0]
            if kind.startswith("tuple"):
                ok = isinstance(value, (list, tuple)) and all(_is_number(x) for x in value)
                want = "a list of numbers"
            elif kind == "float":
                ok, want = _is_number(value), "a finite number"
            elif kind == "int":
                ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
            else:
                ok, want = isinstance(value, {"str": str, "bool": bool}[kind]), f"a {kind}"
            if not ok:
                raise ValueError(f"{field.name} must be {want}{' or null' if 'None' in kinds else ''}, got {value!r}")

    def __post_init__(self):
        self._check_types()
        self.steps = tuple(float(s) for s in self.steps)
        self.betas = tuple(float(b) for b in self.betas)
        for name in (
            "critic_ratio",
            "batch_size",
            "grad_accum",
            "max_steps",
            "log_every",
            "save_every",
            "keep_checkpoints",
            "chunk_frames",
            "latent_frames",
            "latent_height",
            "latent_width",
            "ode_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sink_frames", "window_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.latent_frames % self.chunk_frames:
            raise ValueError(
                f"latent_frames={self.latent_frames} is not a multiple of chunk_frames={self.chunk_frames}"
            )
        if self.weighting not in ("generator", "critic", "none"):
            raise ValueError(f"weighting must be 'generator', 'critic' or 'none', got {self.weighting!r}")
        if not isinstance(self.fsdp, bool):
            raise ValueError(f"fsdp must be true or false, got {self.fsdp!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive or null, got {self.max_minutes}")
        if (
            min(self.object_weight, self.motion_weight, self.fixed_clips, self.probe_every, self.teacher_chunk_frames)
            < 0
        ):
            raise ValueError(
                f"object_weight, motion_weight, fixed_clips, probe_every and teacher_chunk_frames must be >= 0, "
                f"got {self.object_weight}, {self.motion_weight}, {self.fixed_clips}, {self.probe_every}, "
                f"{self.teacher_chunk_frames}"
            )
        if self.warmup_steps < 0 or self.lr_decay_steps < 0:
            raise ValueError(
                f"warmup_steps and lr_decay_steps must be >= 0, got {self.warmup_steps}, {self.lr_decay_steps}"
            )
        if self.lr_decay_steps and self.lr_decay_steps <= self.warmup_steps:
            raise ValueError(
                f"lr_decay_steps={self.lr_decay_steps} must be 0 (no decay) or after warmup_steps={self.warmup_steps}"
            )
        if not 0 <= self.lr_floor <= 1:
            raise ValueError(f"lr_floor must be in [0, 1], got {self.lr_floor}")
        for name in ("start_at_zero", "places"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.object_weight_until <= 1:
            raise ValueError(f"object_weight_until must be in (0, 1], got {self.object_weight_until}")
        if self.data_workers < 0:
            raise ValueError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.loss_space not in ("velocity", "x0"):
            raise ValueError(f"loss_space must be 'velocity' or 'x0', got {self.loss_space!r}")
        if self.data not in (None, "world"):
            raise ValueError(f"data must be 'world' or null, got {self.data!r}")
        if self.reward is not None and not (isinstance(self.reward, str) and self.reward):
            raise ValueError(f"reward must be 'flow', a VLM reward folder or null, got {self.reward!r}")

    def lr_scale(self, step: int) -> float:
        """The factor on every base learning rate at trainer step ``step``."""
        return lr_scale(step, self.warmup_steps, self.lr_decay_steps, self.lr_floor)

    def cache_config(self) -> CacheConfig:
        """The student's streaming cache during training (float32 K/V: the rollout runs outside
        autocast)."""
        return CacheConfig(
            sink_frames=self.sink_frames,
            window_frames=self.window_frames,
            chunk_frames=self.chunk_frames,
            alpha=self.alpha,
            dtype=torch.float32,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["steps"], d["betas"] = list(self.steps), list(self.betas)
        return d

    def save(self, path) -> None:
        """Writes the YAML atomically (:func:`reward_forcing.files.atomic_output`)."""
        from ..files import atomic_output

        with atomic_output(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def resume_changes(self, saved: dict) -> list[str]:
        """The fields that differ from a checkpoint's config ``saved`` and would make a resumed
        run differ from an uninterrupted one (all but :data:`RESUMABLE_CHANGES`)."""
        mine = self.to_dict()
        saved = TrainConfig().to_dict() | saved  # a field added since: its default was in force
        return sorted(
            k for k in mine.keys() | saved.keys() if k not in RESUMABLE_CHANGES and mine.get(k) != saved.get(k)
        )

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
