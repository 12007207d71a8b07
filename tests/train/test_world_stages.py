"""The embedded model's training path: world clips, the teacher stage (flow matching, exact
resume) and the three stages chained through the CLI with the world's real parts (WAN_WORLD,
MiniLM, pixel codec, flow reward), at toy sizes."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from reward_forcing.cli import main
from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.text_encoder import HashedTextEncoder
from reward_forcing.models.wan_config import NAMED_CONFIGS, WAN_WORLD
from reward_forcing.train import TrainConfig
from reward_forcing.train.teacher import TeacherTrainer, frame_difference_loss, object_weight_scale
from reward_forcing.train.checkpoints import latest_checkpoint
from reward_forcing.train.world_data import WorldClips, world_prompts
from reward_forcing.world import parse_prompt, scene_split
from trainers import CODEC, SMALL


def test_world_clips_are_encoded_seeded_and_from_the_train_split():
    clips = WorldClips(CODEC, latent_frames=3, height=16, width=16)
    x, prompts, _ = clips.sample(4, np.random.default_rng(0))
    y, again, _ = clips.sample(4, np.random.default_rng(0))
    assert x.shape == (4, 12, 3, 8, 8) and torch.equal(x, y) and prompts == again
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    assert all(scene_split(parse_prompt(p)) == "train" for p in world_prompts(50))


def _teacher(tmp_path, seed=0, **kw):
    base = dict(
        out_dir=str(tmp_path),
        latent_frames=3,
        latent_height=8,
        latent_width=8,
        chunk_frames=1,
        batch_size=2,
        grad_accum=2,
        lr_generator=1e-3,
        ema_start=1,
        max_steps=4,
        save_every=100,
        shift=3.0,
        cond_dropout=0.5,
        data="world",
    )
    cfg = TrainConfig(**(base | kw))
    torch.manual_seed(seed)
    model = CausalWanModel(SMALL)
    return TeacherTrainer(cfg, model, HashedTextEncoder(16, 8), WorldClips(CODEC, 3, 16, 16))


def test_probe_and_object_weight_in_the_teacher_stage(tmp_path):
    """The probe logs object/background x0 errors, colour binding and sample scores without
    touching the training streams; the object weight changes the loss."""
    plain = [_teacher(tmp_path / "a").train_step() for _ in range(1)]
    probed = _teacher(tmp_path / "b", probe_every=2)
    logs = [probed.train_step() for _ in range(2)]
    assert logs[0]["loss"] == plain[0]["loss"] and "x0_object@0.8" not in logs[0]
    assert {"x0_object@0.8", "x0_background@0.95", "colour_binding", "direction_binding", "probe_shape_right"} <= set(
        logs[1]
    )
    assert all(0 <= logs[1][k] <= 1 for k in ("colour_binding", "direction_binding", "probe_found"))
    weighted = _teacher(tmp_path / "c", object_weight=20.0).train_step()
    assert weighted["loss"] > plain[0]["loss"]
    decayed = _teacher(tmp_path / "d", object_weight=20.0, object_weight_until=0.5).train_step()
    assert plain[0]["loss"] < decayed["loss"] < weighted["loss"]
    assert _teacher(tmp_path / "e", motion_weight=1.0).train_step()["loss"] > plain[0]["loss"]
    causal = _teacher(tmp_path / "f", probe_every=1, teacher_chunk_frames=1).train_step()  # sampled frame by frame
    assert {"x0_object@0.8", "colour_binding", "probe_found"} <= set(causal)


def test_frame_difference_loss_is_the_x0_errors_change_between_video_frames():
    from einops import rearrange

    g = torch.Generator().manual_seed(0)
    x0, noise, velocity = (torch.randn(2, 48, 3, 4, 4, generator=g) for _ in range(3))
    sigma = torch.tensor([0.3, 0.9])
    err = sigma.view(2, 1, 1, 1, 1) * (velocity - (noise - x0))
    video = rearrange(err, "b (t c p q) f h w -> b c (f t) (h p) (w q)", t=4, c=3, p=2, q=2)  # 12 frames
    expected = (video[:, :, 1:] - video[:, :, :-1]).pow(2).mean(dim=(1, 2, 3, 4))
    assert torch.allclose(frame_difference_loss(velocity, noise, x0, sigma, 4), expected, atol=1e-6)
    # an error that is the same in every frame (a still object drawn wrong) costs nothing
    still = rearrange(
        torch.randn(2, 3, 1, 8, 8, generator=g).expand(2, 3, 12, 8, 8),
        "b c (f t) (h p) (w q) -> b (t c p q) f h w",
        t=4,
        p=2,
        q=2,
    )
    assert frame_difference_loss(noise - x0 + still, noise, x0, torch.ones(2), 4).abs().max() < 1e-6
    with pytest.raises(ValueError, match="motion_weight"):
        TrainConfig(motion_weight=-1.0)


def test_block_causal_teacher_trains_on_a_clean_prefix_then_a_level_per_chunk(tmp_path, monkeypatch):
    trainer = _teacher(tmp_path, teacher_chunk_frames=2)
    sigma = trainer._sigmas(400, 3)  # chunks of frames (0, 1) and (2,)
    clean = (sigma == 0).sum(1)
    assert set(clean.tolist()) == {0, 2}  # whole chunks, both prefixes drawn
    assert bool((sigma[clean == 2, 2] > 0).all()) and bool((sigma[:, 0] == sigma[:, 1]).all())
    noisy = sigma[clean == 0]
    assert bool((noisy > 0).all()) and bool((noisy[:, 0] != noisy[:, 2]).any())  # a level per chunk
    calls = []
    forward = CausalWanModel.forward
    monkeypatch.setattr(
        CausalWanModel,
        "forward",
        lambda self, *a, **kw: calls.append(kw.get("chunk_frames")) or forward(self, *a, **kw),
    )
    assert np.isfinite(trainer.train_step()["loss"]) and calls == [2, 2]  # grad_accum 2, block-causal
    with pytest.raises(ValueError, match="teacher_chunk_frames"):
        TrainConfig(teacher_chunk_frames=-1)


def test_object_weight_falls_to_zero_above_its_noise_level():
    sigma = torch.tensor([0.0, 0.5, 0.75, 1.0])
    assert torch.equal(object_weight_scale(sigma, 0.5), torch.tensor([1.0, 1.0, 0.5, 0.0]))
    assert torch.equal(object_weight_scale(sigma, 1.0), torch.ones(4))
    with pytest.raises(ValueError, match="object_weight_until"):
        TrainConfig(object_weight_until=0.0)


def test_teacher_stage_learns_and_resumes_exactly(tmp_path):
    straight = _teacher(tmp_path / "a")
    logs = [straight.train_step() for _ in range(4)]
    assert all(np.isfinite(r["loss"]) for r in logs)
    stopped = _teacher(tmp_path / "b")
    for _ in range(3):
        stopped.train_step()
    path = stopped.save_checkpoint()
    for step in (2, 3, 4):  # logged before the checkpoint / by the interrupted run after it
        stopped.log({"step": step, "loss": 1.0})
    with open(tmp_path / "b" / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a write cut short
    resumed = _teacher(tmp_path / "b", seed=7)  # other init: everything must come from the file
    assert resumed.resume() == path and resumed.step == 3
    log = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [2]  # what the resumed run redoes is gone
    assert resumed.train_step()["loss"] == logs[-1]["loss"]
    for a, b in zip(resumed.ema.state_dict().values(), straight.ema.state_dict().values()):
        assert torch.equal(a, b)
    # the checkpoint loads as a model (EMA preferred), config read from the file
    model = load_causal_wan(path, dtype=torch.float32)
    assert model.config == SMALL
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stopped.ema.state_dict().values()))


def test_loss_space_x0_measures_the_x0_error(tmp_path):
    """Same step, same draws: the x0 loss is the velocity loss with each sample's error scaled by
    sigma <= 1, so it is smaller (a swapped wiring would make it equal or larger)."""
    velocity = _teacher(tmp_path / "v").train_step()["loss"]
    x0 = _teacher(tmp_path / "x", loss_space="x0").train_step()["loss"]
    assert x0 < 0.9 * velocity, (x0, velocity)


def test_x0_model_with_a_velocity_loss_warns(tmp_path):
    model = CausalWanModel(dataclasses.replace(SMALL, prediction="x0"))
    cfg = TrainConfig(
        out_dir=str(tmp_path), latent_frames=3, latent_height=8, latent_width=8, chunk_frames=1, data="world"
    )
    with pytest.warns(UserWarning, match="loss_space: x0"):
        TeacherTrainer(cfg, model, HashedTextEncoder(16, 8), WorldClips(CODEC, 3, 16, 16))


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_teacher_loss_falls_on_a_fixed_batch(tmp_path, cpu_bf16):
    """A flow-matching step on the same clips, noise and times lowers the loss (the gradient is
    right), in float32 and under CPU bf16 autocast."""
    trainer = _teacher(tmp_path, max_steps=50, cpu_bf16=cpu_bf16)
    state = trainer.data_rng.bit_generator.state, trainer.noise_rng.get_state()
    losses = []
    for _ in range(15):
        trainer.data_rng.bit_generator.state, _ = state
        trainer.noise_rng.set_state(state[1])
        losses.append(trainer.train_step()["loss"])
    assert losses[-1] < 0.8 * losses[0], losses


WORLD = dict(
    latent_frames=4,
    latent_height=8,
    latent_width=8,
    chunk_frames=2,
    sink_frames=1,
    window_frames=1,
    critic_ratio=2,
    grad_accum=1,
    batch_size=1,
    ema_start=1,
    max_steps=1,
    ode_steps=4,
    save_every=1,
    text_encoder="minilm",
    vae="pixel",
    data="world",
    shift=3.0,
    loss_space="x0",
)


def _train(tmp_path, stage, name, **kw):
    path = tmp_path / f"{name}.yaml"
    TrainConfig(**(WORLD | dict(out_dir=str(tmp_path / name)) | kw)).save(path)
    return main(["train", "--config", str(path), "--stage", stage, "--no-progress"])


@pytest.mark.slow
def test_three_stages_chain_through_the_cli(tmp_path):
    assert _train(tmp_path, "teacher", "teacher", teacher="world") == 0
    teacher = str(latest_checkpoint(tmp_path / "teacher"))
    assert load_causal_wan(teacher, dtype=torch.float32).config == WAN_WORLD
    assert _train(tmp_path, "ode-init", "ode", generator=teacher, teacher=teacher) == 0
    ode = str(latest_checkpoint(tmp_path / "ode"))
    assert (
        _train(
            tmp_path,
            "dmd",
            "dmd",
            generator=ode,
            critic=teacher,
            teacher=teacher,
            weighting="critic",
            reward="flow",
            beta=2.0,
        )
        == 0
    )
    assert latest_checkpoint(tmp_path / "dmd") is not None


def test_resume_refuses_a_changed_run_and_allows_more_steps(tmp_path, capsys):
    assert _train(tmp_path, "teacher", "t", teacher="world") == 0
    assert _train(tmp_path, "teacher", "t", teacher="world", lr_generator=1e-3) == 2
    assert "lr_generator" in capsys.readouterr().err
    assert _train(tmp_path, "teacher", "t", teacher="world", max_steps=2) == 0
    assert latest_checkpoint(tmp_path / "t").name == "checkpoint-00000002.pt"


def test_teacher_stage_errors(tmp_path, capsys):
    assert _train(tmp_path, "teacher", "nodata", teacher="world", data=None) == 2
    assert "data: world" in capsys.readouterr().err
    assert _train(tmp_path, "teacher", "novae", teacher="world", vae="tiny") == 2
    assert "pixel codec" in capsys.readouterr().err
    from safetensors.torch import save_file

    sketched = dataclasses.replace(WAN_WORLD, layout=True, layout_sketch=8)  # drawn where snapped clips start
    path = tmp_path / "sketched.safetensors"
    metadata = {"config": json.dumps(dataclasses.asdict(sketched))}
    save_file(CausalWanModel(sketched).state_dict(), str(path), metadata=metadata)
    assert _train(tmp_path, "teacher", "nosnap", teacher=str(path), places=1.0) == 2
    assert "snap_places" in capsys.readouterr().err


def test_worker_rendering_gives_the_same_clips():
    serial = WorldClips(CODEC, 3, 16, 16)
    pooled = WorldClips(CODEC, 3, 16, 16, workers=2)
    a, pa, _ = serial.sample(5, np.random.default_rng(3))
    b, pb, _ = pooled.sample(5, np.random.default_rng(3))
    assert torch.equal(a, b) and pa == pb


def test_max_minutes_stops_with_a_checkpoint_and_overrides_apply(tmp_path, capsys):
    """A time-limited run stops after its first step (checkpointed); --set overrides the YAML."""
    args = ["--set", "max_minutes=0.00001", "--set", "max_steps=50", "--set", "batch_size=1"]
    path = tmp_path / "t.yaml"
    TrainConfig(**(WORLD | dict(out_dir=str(tmp_path / "t"), teacher="world", max_steps=3))).save(path)
    assert main(["train", "--config", str(path), "--stage", "teacher", "--no-progress", *args]) == 0
    assert latest_checkpoint(tmp_path / "t").name == "checkpoint-00000001.pt"
    saved = TrainConfig.load(tmp_path / "t" / "config.yaml")
    assert (saved.max_steps, saved.batch_size, saved.max_minutes) == (50, 1, 0.00001)
    assert main(["train", "--config", str(path), "--stage", "teacher", "--set", "nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--stage", "teacher", "--set", "batch_size"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_fixed_clips_draw_from_one_pool_with_its_masks():
    clips = WorldClips(CODEC, 3, 16, 16, fixed=3, fixed_seed=1)
    pool = clips.fixed_pool
    x, prompts, masks = clips.sample(8, np.random.default_rng(0))
    assert pool is not None and set(prompts) <= set(pool.prompts) and masks.shape == x.shape
    for latents, prompt, mask in zip(x, prompts, masks):
        i = pool.prompts.index(prompt)
        assert torch.equal(latents, pool.latents[i]) and torch.equal(mask, pool.masks[i])
    assert 0 < float(masks.mean()) < 1 and WorldClips(CODEC, 3, 16, 16).fixed_pool is None


def test_shipped_world_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[2] / "configs").glob("world-*.yaml"))
    assert len(configs) == 5
    for path in configs:
        cfg = TrainConfig.load(path)
        assert cfg.text_encoder == "minilm" and cfg.vae == "pixel", path
        assert cfg.loss_space == "x0" or "ode-init" in path.name, path  # ODE init regresses on x0
        for model in (cfg.teacher, cfg.generator):  # a committed file, a run folder or a named config
            assert model.startswith("runs/") or model in NAMED_CONFIGS or (path.parents[1] / model).is_file()


def test_clips_rendered_with_torch_are_the_same():
    a, pa, _ = WorldClips(CODEC, 3, 16, 16).sample(4, np.random.default_rng(9))
    b, pb, _ = WorldClips(CODEC, 3, 16, 16, render_device="cpu").sample(4, np.random.default_rng(9))
    assert torch.equal(a, b) and pa == pb


def test_cpu_bf16_autocasts_the_teacher_step_and_resumes_with_it(tmp_path):
    """``cpu_bf16`` runs the CPU forward under bf16 autocast (the linear layers see bf16; weights,
    loss and optimizer stay float32; it learns: the fixed-batch test above) and may be switched on
    when resuming a run (a resumable change)."""
    seen = {}
    for flag in (False, True):
        trainer = _teacher(tmp_path / str(flag), cpu_bf16=flag)
        hook = trainer.model.head.head.register_forward_hook(lambda m, i, o: seen.__setitem__(flag, o.dtype))
        assert np.isfinite(trainer.train_step()["loss"])
        hook.remove()
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert seen == {False: torch.float32, True: torch.bfloat16}
    assert _train(tmp_path, "teacher", "t", teacher="world") == 0
    assert _train(tmp_path, "teacher", "t", teacher="world", max_steps=2, cpu_bf16=True) == 0
    assert latest_checkpoint(tmp_path / "t").name == "checkpoint-00000002.pt"


@pytest.mark.slow
def test_ode_init_and_dmd_steps_run_under_cpu_bf16(tmp_path):
    """The ODE-init and DMD stages under CPU bf16 autocast (teacher/critic forwards in bf16,
    rollouts in float32 outside autocast) give finite losses."""
    assert _train(tmp_path, "teacher", "teacher", teacher="world", cpu_bf16=True) == 0
    teacher = str(latest_checkpoint(tmp_path / "teacher"))
    assert _train(tmp_path, "ode-init", "ode", generator=teacher, teacher=teacher, cpu_bf16=True) == 0
    ode = str(latest_checkpoint(tmp_path / "ode"))
    assert (
        _train(
            tmp_path,
            "dmd",
            "dmd",
            generator=ode,
            critic=teacher,
            teacher=teacher,
            weighting="generator",
            reward="flow",
            beta=2.0,
            cpu_bf16=True,
        )
        == 0
    )
    for name in ("ode", "dmd"):
        rows = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert rows and all(np.isfinite(v) for r in rows for k, v in r.items() if "loss" in k), rows


def test_start_at_zero_sets_where_the_teacher_clips_start():
    """Every clip from frame 0 (the prompt's direction is what its first frames show) at 1.0; the
    run's teacher stage takes the share from its config."""
    from reward_forcing.models.pixel_codec import PixelCodec
    from reward_forcing.train.run import _trainer
    from reward_forcing.world import render, sample_scene

    def first_frames(n, seed):  # what start_at_zero=1.0 must give: each scene rendered from frame 0
        rng = np.random.default_rng(seed)
        clips = []
        for _ in range(n):
            scene = sample_scene(rng, height=16, width=16, split="train")
            rng.random()  # the start-frame draw
            clips.append(render(scene, 12, 0)[0])
        return PixelCodec().encode(torch.from_numpy(np.stack(clips)))

    cfg = TrainConfig(
        data="world", vae="pixel", teacher="world", text_encoder="minilm", latent_frames=3, latent_height=4,
        latent_width=4, chunk_frames=1, start_at_zero=1.0, out_dir="unused",
    )  # fmt: skip
    data = _trainer(cfg, "teacher", torch.device("cpu")).data
    assert torch.equal(data.sample(6, np.random.default_rng(4)).latents, first_frames(6, 4))
    later = WorldClips(PixelCodec(), 3, 16, 16, start_at_zero=0.0).sample(6, np.random.default_rng(4)).latents
    assert not torch.equal(later, first_frames(6, 4))
    with pytest.raises(ValueError, match="start_at_zero"):
        TrainConfig(start_at_zero=1.5)


def test_places_state_the_start_cells_of_clips_from_frame_0():
    """places=1: every clip from frame 0 has a prompt naming where its objects start, and it shows
    them there; places=0 draws exactly as before (no extra random numbers); later starts never
    state a place (the object has moved on)."""
    from reward_forcing.eval import world_scores
    from reward_forcing.models.pixel_codec import PixelCodec
    from reward_forcing.train.world_probe import decode_videos
    from reward_forcing.world import sample_scene

    codec = PixelCodec()
    placed = WorldClips(codec, 2, start_at_zero=1.0, places=1.0).sample(8, np.random.default_rng(3))
    specs = [parse_prompt(p) for p in placed.prompts]
    assert all(o.place is not None for s in specs for o in s.objects)
    videos = decode_videos(codec, placed.latents)
    assert np.mean([world_scores(v, s)["place_right"] for v, s in zip(videos, specs)]) >= 0.9
    rng, drawn = np.random.default_rng(3), []  # the draws of places=0: a scene and its start, nothing more
    for _ in range(8):
        drawn.append(sample_scene(rng, split="train").prompt)
        if rng.random() >= 0.5:
            rng.integers(0, 160)
    assert WorldClips(codec, 2, start_at_zero=0.5, places=0.0).sample(8, np.random.default_rng(3)).prompts == drawn
    later = WorldClips(codec, 2, start_at_zero=0.0, places=1.0).sample(8, np.random.default_rng(3))
    assert all(o.place is None for p in later.prompts for o in parse_prompt(p).objects)
    snapped = WorldClips(codec, 2, start_at_zero=1.0, places=1.0, snap_places=True).sample(8, np.random.default_rng(3))
    assert snapped.prompts == placed.prompts and not torch.equal(snapped.latents, placed.latents)
    again = WorldClips(codec, 2, start_at_zero=1.0, places=1.0, snap_places=True).sample(8, np.random.default_rng(3))
    assert torch.equal(again.latents, snapped.latents)
    with pytest.raises(ValueError, match="places"):
        TrainConfig(places=-0.1)


def test_a_layout_teacher_learns_its_layout_from_placed_clips():
    """A layout model (WanConfig.layout) gets its text encoder wrapped with the layout of the run's
    token frame; world prompts for the later stages say where objects start for a layout model or
    when ``places`` > 0 (and are unchanged without); a teacher step on placed clips moves the layout
    embedding."""
    from reward_forcing.train.run import _prompts, _text_encoder
    from reward_forcing.world import LayoutTextEncoder

    laid_out = dataclasses.replace(SMALL, text_dim=32, layout=True)
    cfg = TrainConfig(**(WORLD | dict(text_encoder="tiny", latent_width=12)))
    text = _text_encoder(cfg, CausalWanModel(laid_out), torch.device("cpu"))
    assert isinstance(text, LayoutTextEncoder) and (text.rows, text.cols) == (4, 6)
    assert not isinstance(_text_encoder(cfg, CausalWanModel(SMALL), torch.device("cpu")), LayoutTextEncoder)
    sketched = dataclasses.replace(laid_out, layout_sketch=2)
    assert _text_encoder(cfg, CausalWanModel(sketched), torch.device("cpu")).sketch_pixels == 2
    placed = _prompts(dataclasses.replace(cfg, places=1.0))
    assert all(o.place is not None for p in placed[:50] for o in parse_prompt(p).objects)
    assert _prompts(cfg, layout=True) == placed
    assert _prompts(cfg) == world_prompts(seed=cfg.seed)
    assert all(o.place is None for p in world_prompts(50) for o in parse_prompt(p).objects)

    run = TrainConfig(
        out_dir="unused", latent_frames=2, chunk_frames=1, latent_height=8, latent_width=8, batch_size=4, data="world"
    )
    torch.manual_seed(0)
    model = CausalWanModel(laid_out)
    data = WorldClips(CODEC, 2, 16, 16, start_at_zero=1.0, places=1.0)
    trainer = TeacherTrainer(run, model, LayoutTextEncoder(HashedTextEncoder(32, 8), 4, 4), data)
    trainer.train_step()
    assert model.layout_embedding.weight.abs().max() > 0
