"""The installed extension: built for the running torch, refuses another, wheel installs elsewhere."""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

import reward_forcing
from reward_forcing import _extension

ROOT = Path(__file__).resolve().parents[1]


def test_extension_is_built_for_this_torch():
    assert reward_forcing.HAS_CPP, _extension.BUILD_ERROR
    assert _extension._C.torch_version == torch.__version__
    assert hasattr(torch.ops.reward_forcing, "ring_append")
    assert hasattr(torch.ops.reward_forcing, "sink_window_attention")


def test_import_under_another_torch_names_both_versions(tmp_path):
    pkg = Path(reward_forcing.__file__).parent
    copy = tmp_path / "reward_forcing"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    info = copy / "_build_info.py"
    info.write_text(info.read_text().replace(torch.__version__, "1.0.0+other"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-c", "import reward_forcing"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "built against torch 1.0.0+other" in r.stderr and torch.__version__ in r.stderr


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    """`pip wheel --no-build-isolation .` gives a wheel that works in a new venv with this torch."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-C",
            f"build-dir={tmp_path / 'build'}",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", torch_spec, "numpy", *map(str, wheels.glob("*.whl"))], check=True
    )
    r = subprocess.run([str(py), "-m", "reward_forcing"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "backend=kernel" in r.stdout and "C++ extension: built" in r.stdout
