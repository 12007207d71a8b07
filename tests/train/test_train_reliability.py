"""``reward-forcing train`` under bad input and signals: YAML syntax errors (file or ``--set``),
bad field values, an incompatible ``ode_steps``, corrupt/truncated/foreign resume checkpoints and
an unwritable ``out_dir`` give one line and status 2 before anything is written; SIGTERM/SIGHUP
stop a run with only complete checkpoints left, from which it resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

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


def config(tmp_path, name="run", **kw):
    path = tmp_path / f"{name}.yaml"
    TrainConfig(**(TINY | dict(out_dir=str(tmp_path / name)) | kw)).save(path)
    return path


def train(*args):
    return main(["train", *map(str, args), "--no-progress"])


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


TRAIN = ["-m", "reward_forcing.cli", "train", "--stage", "ode-init", "--no-progress"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _signal_after_first_checkpoint(args, out, signum) -> tuple[str, int]:
    """Runs ``python ARGS``, sends ``signum`` a second after the first checkpoint appears in
    ``out`` and waits for the exit; asserts that no partial file is left. Returns (stderr, status)."""
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ONE_THREAD
    )
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(out) is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    names = [p.name for p in out.iterdir()]
    assert not [n for n in names if n.endswith((".part", ".tmp"))], names
    return proc.stderr.read(), proc.returncode


def test_yaml_syntax_errors(tmp_path, capsys):
    """Base b543e33: a yaml.ScannerError/ParserError traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("latent_frames: [4\nsteps: {")
    assert train("--config", bad) == 2
    assert "invalid YAML" in one_line(capsys)
    assert train("--config", config(tmp_path), "--set", "steps=[1000, 500") == 2
    assert "invalid YAML" in one_line(capsys)


@pytest.mark.parametrize(
    "override, words",
    [
        ("latent_height=four", "latent_height must be an integer"),
        ("latent_height=-4", "latent_height must be >= 1"),
        ("alpha=7", "alpha must be in [0, 1]"),
        ("steps=[1000, x]", "steps must be a list of numbers"),
    ],
)
def test_bad_field_values_are_refused_before_writing(tmp_path, capsys, override, words):
    """Base b543e33: "four" and -4 failed inside the first step, after config.yaml was written."""
    assert train("--config", config(tmp_path), "--stage", "ode-init", "--set", override) == 2
    assert words in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_incompatible_ode_steps_refused_before_writing(tmp_path, capsys):
    """1000/750/500/250 are not on a 6-step grid. Base b543e33: failed at the first step, after
    config.yaml was written."""
    assert train("--config", config(tmp_path, ode_steps=6), "--stage", "ode-init") == 2
    assert "not on a 6-step grid" in one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign_pickle", "list"])
def test_unreadable_resume_checkpoint(tmp_path, capsys, kind):
    """Base b543e33: a RuntimeError / UnpicklingError / KeyError traceback."""
    path = config(tmp_path)
    assert train("--config", path, "--stage", "ode-init") == 0
    ckpt = latest_checkpoint(tmp_path / "run")
    data = ckpt.read_bytes()
    if kind == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        ckpt.write_bytes(b"\x00not a checkpoint" * 100)
    elif kind == "foreign_pickle":
        import pickle

        ckpt.write_bytes(pickle.dumps(subprocess.Popen))  # weights_only refuses it
    else:
        torch.save([1, 2, 3], ckpt)
    capsys.readouterr()
    assert train("--config", path, "--stage", "ode-init", "--set", "max_steps=2") == 2
    assert str(ckpt) in one_line(capsys)


def test_unwritable_out_dir(tmp_path, capsys):
    """out_dir below a regular file (unwritable even as root). Base b543e33: a traceback from
    mkdir, after the models were built."""
    (tmp_path / "file").write_text("x")
    path = config(tmp_path, out_dir=str(tmp_path / "file" / "run"))
    assert train("--config", path, "--stage", "ode-init") == 2
    assert "file" in one_line(capsys)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_with_complete_checkpoints_and_resumes(tmp_path, signum):
    """A long run gets the signal after its first checkpoint: it exits with 128 + signum, leaves
    no partial file, and the next run resumes from the newest checkpoint. Base b543e33: the
    signal killed it (a checkpoint being written stayed as ``.tmp``)."""
    path, out = config(tmp_path, max_steps=100000), tmp_path / "run"
    err, returncode = _signal_after_first_checkpoint(TRAIN + ["--config", str(path)], out, signum)
    assert returncode == 128 + signum, err[-2000:]
    assert "resumes the run" in err
    step = torch.load(latest_checkpoint(out), weights_only=True)["step"]
    config(tmp_path, max_steps=step + 1)
    assert train("--config", path, "--stage", "ode-init") == 0
    assert torch.load(latest_checkpoint(out), weights_only=True)["step"] == step + 1


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_with_resumable_checkpoints(tmp_path):
    """SIGTERM to the torchrun agent reaches both gloo ranks: the run ends, leaves
    no partial file, and its newest checkpoint resumes the same 2-rank run."""
    out = tmp_path / "run"
    command = TORCHRUN + TRAIN + ["--config", str(config(tmp_path, max_steps=100000))]
    err, returncode = _signal_after_first_checkpoint(command, out, signal.SIGTERM)
    assert returncode != 0, err[-2000:]
    state = torch.load(latest_checkpoint(out), weights_only=True)
    assert state["world"] == 2
    config(tmp_path, max_steps=state["step"] + 1)
    resumed = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=240, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {state['step']}" in resumed.stdout
    assert torch.load(latest_checkpoint(out), weights_only=True)["step"] == state["step"] + 1
