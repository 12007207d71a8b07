"""``reward-forcing train --config X.yaml --stage ode-init|dmd``: the CLI subcommand runs the same
function as ``python -m reward_forcing.train``."""

import json

import pytest

from reward_forcing.cli import main
from reward_forcing.train import TrainConfig
from reward_forcing.train.checkpoints import latest_checkpoint

TINY = dict(
    latent_frames=4,
    latent_height=4,
    latent_width=4,
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
    weighting="none",
)


def _train(tmp_path, stage, name, **kw):
    path = tmp_path / f"{name}.yaml"
    TrainConfig(**(TINY | dict(out_dir=str(tmp_path / name)) | kw)).save(path)
    return main(["train", "--config", str(path), "--stage", stage, "--no-progress"])


def test_train_subcommand_runs_both_stages(tmp_path):
    assert _train(tmp_path, "ode-init", "ode") == 0
    ode = latest_checkpoint(tmp_path / "ode")
    assert ode is not None
    assert _train(tmp_path, "dmd", "dmd", generator=str(ode)) == 0
    assert latest_checkpoint(tmp_path / "dmd") is not None
    assert (tmp_path / "dmd" / "config.yaml").is_file()
    assert len((tmp_path / "dmd" / "log.jsonl").read_text().splitlines()) == 1


def test_train_subcommand_names_missing_paths(tmp_path, capsys):
    cases = [
        (dict(teacher=str(tmp_path / "no-teacher")), "teacher checkpoint not found"),
        (dict(prompts=str(tmp_path / "no-prompts.txt")), "prompt file not found"),
        (dict(weighting="generator", reward=str(tmp_path / "no-reward")), "VLM reward folder not found"),
    ]
    for i, (kw, message) in enumerate(cases):
        assert _train(tmp_path, "dmd", f"bad{i}", **kw) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_dmd_stage_with_a_vlm_reward(tmp_path):
    """The generator-weighted DMD stage end to end with a tiny random VLM reward folder."""
    pytest.importorskip("transformers")
    from test_vlm_reward import _save_tiny_reward

    folder = tmp_path / "vlm"
    folder.mkdir()
    _save_tiny_reward(folder)
    assert _train(tmp_path, "dmd", "vlm", weighting="generator", reward=str(folder)) == 0
    record = json.loads((tmp_path / "vlm" / "log.jsonl").read_text().splitlines()[0])
    assert "reward" in record and record["reward"] == record["reward"]
