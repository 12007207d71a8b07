import json

import pytest
import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.text_encoder import HashedTextEncoder
from reward_forcing.models.wan_config import WAN_TINY
from reward_forcing.train import ReDMDTrainer, TrainConfig
from reward_forcing.train.checkpoints import latest_checkpoint

from trainers import PROMPTS, redmd_trainer


def _config(tmp_path, **kw):
    base = dict(
        out_dir=str(tmp_path),
        latent_frames=4,
        latent_height=4,
        latent_width=4,
        chunk_frames=2,
        sink_frames=1,
        window_frames=1,
        critic_ratio=2,
        grad_accum=1,
        batch_size=1,
        lr_generator=1e-4,
        lr_critic=1e-4,
        ema_start=1,
        max_steps=3,
        save_every=2,
        weighting="none",
    )
    base.update(kw)
    return TrainConfig(**base)


_trainer = redmd_trainer


@pytest.mark.parametrize("weighting", ["generator", "critic"])
def test_steps_run_and_losses_finite(tmp_path, weighting):
    trainer = _trainer(_config(tmp_path, weighting=weighting, normalize_weights=True, batch_size=2))
    before = [p.clone() for p in trainer.generator.parameters()]
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "generator_loss" in records[0] and "generator_loss" not in records[1]
    for r in records:
        assert all(v == v and abs(v) < float("inf") for v in r.values() if isinstance(v, float))
    if weighting == "generator":
        assert "reward" in records[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.generator.parameters()))
    assert trainer.generator_steps == 2
    assert [p.name for p in sorted(tmp_path.glob("checkpoint-*"))] == [
        "checkpoint-00000002.pt",
        "checkpoint-00000003.pt",
    ]


def _states(trainer):
    return {
        "generator": trainer.generator.state_dict(),
        "critic": trainer.critic.state_dict(),
        "ema": trainer.ema.state_dict(),
        "opt_g": trainer.opt_g.state_dict()["state"],
        "opt_c": trainer.opt_c.state_dict()["state"],
    }


def _assert_equal(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("schedule", [{}, {"warmup_steps": 2, "lr_decay_steps": 3, "lr_floor": 0.5}])
def test_resume_is_bitwise_exact(tmp_path, schedule):
    straight = _trainer(_config(tmp_path / "a", max_steps=3, save_every=100, **schedule))
    for _ in range(3):
        last = straight.train_step()
    stopped = _trainer(_config(tmp_path / "b", **schedule))
    stopped.train_step()
    stopped.train_step()
    path = stopped.save_checkpoint()
    # other init: everything must come from the file
    resumed = _trainer(_config(tmp_path / "b", **schedule), seed=123)
    assert resumed.resume() == path
    assert resumed.step == 2
    again = resumed.train_step()
    assert again["critic_loss"] == last["critic_loss"]
    _assert_equal(_states(resumed), _states(straight))


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    trainer = _trainer(_config(tmp_path))
    trainer.train_step()
    good = trainer.save_checkpoint()
    content = good.read_bytes()
    trainer.train_step()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert latest_checkpoint(tmp_path) == good and good.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]


def test_config_yaml_roundtrip_and_errors(tmp_path):
    cfg = _config(tmp_path, weighting="critic", beta=1.0)
    cfg.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"lr": 1.0})
    with pytest.raises(ValueError, match="weighting"):
        TrainConfig(weighting="both")
    with pytest.raises(ValueError, match="needs a reward"):
        ReDMDTrainer(
            _config(tmp_path, weighting="generator"),
            *[CausalWanModel(WAN_TINY)] * 3,
            HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len),
            PROMPTS,
        )


def _grads(trainer):
    """The last step's gradients (Adam is blind to their scale: a sum-instead-of-mean bug shows here)."""
    return {
        name: {k: p.grad for k, p in model.named_parameters()}
        for name, model in (("generator_grad", trainer.generator), ("critic_grad", trainer.critic))
    }


def _ddp_worker(rank, world, port, tmp_path):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        trainer = _trainer(_config(tmp_path / "ddp", weighting="generator", normalize_weights=True))
        for _ in range(3):
            trainer.train_step()
        if rank == 0:
            torch.save(_states(trainer) | _grads(trainer), tmp_path / "ddp.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    """2 CPU ranks x batch 1 (gradient all-reduce, global weight normalisation) == 1 process x
    batch 2, up to the order of float sums."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path), nprocs=2)
    single = _trainer(_config(tmp_path / "one", weighting="generator", normalize_weights=True, batch_size=2))
    for _ in range(3):
        single.train_step()
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    ref = _states(single) | _grads(single)
    # Gradients agree up to the order of float sums. Weights are compared to within one Adam step
    # (lr = 1e-4): where a gradient is at rounding level, Adam's m / sqrt(v) turns a sum-order
    # difference into a step of up to lr (seen: 6.5e-5 on a CPU without AVX-512, gradients 7e-6).
    for name in ("generator_grad", "critic_grad"):
        for key, value in ref[name].items():
            torch.testing.assert_close(ddp[name][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
    for name in ("generator", "critic", "ema"):
        for key, value in ref[name].items():
            torch.testing.assert_close(ddp[name][key], value, rtol=0, atol=1e-4, msg=f"{name}.{key}")


def test_teacher_trajectory_of_a_point_mass_is_exact():
    """For data = one point x*, v = (x - x*) / sigma exactly and the flow ODE is a straight line:
    Euler lands on x* and passes (1 - sigma) x* + sigma eps at every student step."""
    from reward_forcing.scheduler import FewStepFlowSchedule
    from reward_forcing.scheduler import teacher_trajectory

    sched = FewStepFlowSchedule()
    target, noise = torch.randn(1, 16, 2, 4, 4, dtype=torch.float64), torch.randn(1, 16, 2, 4, 4, dtype=torch.float64)
    teacher = lambda x, t, c: (x - target) / (t / 1000)  # noqa: E731
    traj = teacher_trajectory(teacher, None, None, noise.float(), sched, guidance_scale=3.0, num_steps=8)
    assert traj.shape == (1, 5, 16, 2, 4, 4)
    for k, sigma in enumerate(sched.sigmas):
        torch.testing.assert_close(traj[:, k].double(), (1 - sigma) * target + sigma * noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(traj[:, -1].double(), target, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        teacher_trajectory(teacher, None, None, noise.float(), sched, num_steps=6)


def test_ode_init_stage_trains_and_feeds_the_dmd_stage(tmp_path):
    from reward_forcing.models.loading import load_causal_wan
    from reward_forcing.train import ODEInitTrainer

    torch.manual_seed(0)
    student, teacher = CausalWanModel(WAN_TINY), CausalWanModel(WAN_TINY)
    cfg = _config(tmp_path, ode_steps=4, max_steps=2, lr_generator=1e-3)
    trainer = ODEInitTrainer(cfg, student, teacher, HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len), PROMPTS)
    before = [p.clone() for p in student.parameters()]
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["ode_loss"] == r["ode_loss"] for r in records)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    loaded = load_causal_wan(latest_checkpoint(tmp_path), WAN_TINY, dtype=torch.float32)
    _assert_equal(loaded.state_dict(), student.state_dict())


def test_main_runs_both_stages_and_names_missing_paths(tmp_path, capsys):
    from reward_forcing.train.run import main

    def run(stage, **kw):
        path = tmp_path / f"{stage}.yaml"
        _config(tmp_path / stage, max_steps=1, ode_steps=4, **kw).save(path)
        return main(["--config", str(path), "--stage", stage, "--no-progress"])

    assert run("ode-init") == 0
    ode = latest_checkpoint(tmp_path / "ode-init")
    assert run("dmd", generator=str(ode)) == 0
    assert (tmp_path / "dmd" / "config.yaml").is_file() and latest_checkpoint(tmp_path / "dmd")
    assert run("dmd", teacher=str(tmp_path / "nope")) == 2
    assert "teacher checkpoint not found" in capsys.readouterr().err


def test_bf16_autocast_path_runs(tmp_path, monkeypatch):
    """The GPU's bf16 autocast path, exercised with CPU autocast: dtypes fit and losses are finite."""
    from reward_forcing.train import ODEInitTrainer
    from reward_forcing.train.loop import TrainLoop

    monkeypatch.setattr(TrainLoop, "_autocast", lambda self: torch.autocast("cpu", dtype=torch.bfloat16))
    trainer = _trainer(_config(tmp_path, weighting="critic"))
    logs = [trainer.train_step() for _ in range(2)]
    ode = ODEInitTrainer(
        _config(tmp_path, ode_steps=4),
        CausalWanModel(WAN_TINY),
        CausalWanModel(WAN_TINY),
        HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len),
        PROMPTS,
    )
    logs.append(ode.train_step())
    losses = [v for r in logs for k, v in r.items() if k.endswith("loss")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())


def test_score_models_run_with_the_teachers_block_causal_mask(tmp_path, monkeypatch):
    """With teacher_chunk_frames the teacher (ODE init, DMD) and the critic run block-causal over its
    chunks, the student over its own; without it the score models are bidirectional."""
    from reward_forcing.train import ODEInitTrainer

    calls = []
    forward = CausalWanModel.forward

    def record(self, *args, chunk_frames=None):
        calls.append((role[id(self)], chunk_frames))
        return forward(self, *args, chunk_frames=chunk_frames)

    monkeypatch.setattr(CausalWanModel, "forward", record)
    for chunk in (0, 1):
        calls.clear()
        trainer = _trainer(_config(tmp_path / f"dmd{chunk}", teacher_chunk_frames=chunk))
        role = {id(trainer.teacher): "teacher", id(trainer.critic): "critic", id(trainer.generator): "generator"}
        trainer.train_step()
        ode = ODEInitTrainer(
            _config(tmp_path / f"ode{chunk}", ode_steps=4, teacher_chunk_frames=chunk),
            CausalWanModel(WAN_TINY),
            CausalWanModel(WAN_TINY),
            HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len),
            PROMPTS,
        )
        role |= {id(ode.teacher): "teacher", id(ode.student): "generator"}
        ode.train_step()
        masks = {r: {c for who, c in calls if who == r} for r in ("teacher", "critic", "generator")}
        assert masks["teacher"] == masks["critic"] == {chunk or None}, masks
        assert masks["generator"] <= {ode.cfg.chunk_frames}  # the student streams (forward_chunk) or is block-causal


def test_lr_scale_warms_up_then_decays_to_its_floor():
    cfg = TrainConfig(warmup_steps=4, lr_decay_steps=14, lr_floor=0.2)
    scales = [cfg.lr_scale(step) for step in range(20)]
    assert scales[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert scales[4] == 1.0 and scales[9] == pytest.approx(0.6)  # halfway down the cosine: (1 + 0.2) / 2
    assert scales[14:] == pytest.approx([0.2] * 6)
    assert all(a >= b for a, b in zip(scales[3:], scales[4:]))
    assert {TrainConfig().lr_scale(step) for step in (0, 10**6)} == {1.0}
    assert TrainConfig(warmup_steps=3).lr_scale(10**6) == 1.0
    for bad, match in (
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 5, "lr_decay_steps": 5}, "lr_decay_steps"),
        ({"lr_floor": 1.5}, "lr_floor"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_every_optimizer_steps_with_the_scheduled_rate(tmp_path, monkeypatch):
    cfg = _config(tmp_path, warmup_steps=2, lr_decay_steps=4, lr_floor=0.5, max_steps=5)
    trainer = _trainer(cfg)
    seen = []  # (optimizer, trainer step, its rate) at every optimizer step

    def spy(opt):
        step = opt.step

        def record(*args, **kw):
            seen.append((opt, trainer.step, opt.param_groups[0]["lr"]))
            return step(*args, **kw)

        monkeypatch.setattr(opt, "step", record)

    spy(trainer.opt_g)
    spy(trainer.opt_c)
    for _ in range(5):
        trainer.train_step()
    assert {opt for opt, _, _ in seen} == {trainer.opt_g, trainer.opt_c}
    assert {step for _, step, _ in seen} == set(range(5))
    for _, step, lr in seen:
        assert lr == pytest.approx(1e-4 * cfg.lr_scale(step))


def test_ema_copies_before_its_start_then_averages(tmp_path):
    trainer = _trainer(_config(tmp_path, ema_start=100))
    trainer.train_step()
    _assert_equal(trainer.ema.state_dict(), trainer.generator.state_dict())
    trainer = _trainer(_config(tmp_path, ema_start=0, ema_decay=0.75))
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    trainer.train_step()
    after = trainer.generator.state_dict()
    for k, v in trainer.ema.state_dict().items():
        torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * after[k])


@pytest.mark.parametrize("ts_schedule", [False, True])
def test_ts_schedule_starts_t_at_the_step_the_exit_step_denoised_to(tmp_path, monkeypatch, ts_schedule):
    """With ts_schedule every DMD and critic t draw starts (before the shift) at the student step
    after the rollout's exit step (0 after the last), so t >= shift(that step); without it, at 0."""
    from reward_forcing.scheduler import shift_sigma
    from reward_forcing.train import dmd
    from reward_forcing.train.rollout import draw_exit_step

    draws, original = [], dmd.sample_timesteps

    def spy(*args, **kw):
        t = original(*args, **kw)
        draws.append((kw["low"], t))
        return t

    monkeypatch.setattr(dmd, "sample_timesteps", spy)
    cfg = _config(tmp_path, ts_schedule=ts_schedule, min_t=0.0, max_t=1000.0, critic_ratio=1, batch_size=8)
    trainer = _trainer(cfg)
    steps = trainer.schedule.steps
    expected = []
    for step in range(4):
        exit_step = draw_exit_step(step, len(steps), cfg.seed)
        low = (int(steps[exit_step + 1]) if exit_step + 1 < len(steps) else 0) if ts_schedule else 0
        trainer.train_step()
        expected += [low, low]  # a generator step and a critic step, both after their rollout
    assert [low for low, _ in draws] == expected
    if ts_schedule:
        assert len(set(expected)) > 1  # several exit steps were exercised
    for low, t in draws:
        assert (t >= shift_sigma(low / 1000, cfg.shift) * 1000 - 1e-3).all()


def test_tensorboard_logging_when_installed_silent_otherwise(tmp_path, monkeypatch):
    """A stand-in torch.utils.tensorboard receives every numeric log value at its step and is
    closed at the end; when the import fails, training logs to jsonl only, without a word."""
    import sys
    import types

    scalars, closed = [], []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            scalars.append((self.log_dir, key, value, step))

        def close(self):
            closed.append(True)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    _trainer(_config(tmp_path / "tb", max_steps=2)).train()
    records = [json.loads(line) for line in (tmp_path / "tb" / "log.jsonl").read_text().splitlines()]
    expected = [
        (str(tmp_path / "tb" / "tensorboard"), k, v, r["step"]) for r in records for k, v in r.items() if k != "step"
    ]
    assert scalars == expected and any(k == "generator_loss" for _, k, _, _ in scalars)
    assert closed == [True]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    _trainer(_config(tmp_path / "none", max_steps=2)).train()
    assert len((tmp_path / "none" / "log.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "none" / "tensorboard").exists()


def test_tilted_critic_is_not_dmd_at_batch_one(tmp_path):
    """At batch 1 the critic's exp(-beta r) weight must act (normalising it by the batch mean would
    make it 1, i.e. plain DMD: that combination warns)."""
    dmd_run = _trainer(_config(tmp_path / "d", weighting="none")).train_step()
    tilted = _trainer(_config(tmp_path / "t", weighting="critic", beta=2.0)).train_step()
    assert tilted["critic_loss"] != dmd_run["critic_loss"]
    with pytest.warns(UserWarning, match="plain DMD"):
        _trainer(_config(tmp_path / "n", weighting="critic", normalize_weights=True))
