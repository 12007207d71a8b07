"""A ReDMDTrainer checkpoint written by the trainer before its split into modules
(tests/train/data/redmd-v1: step 2 of a 2-block model, no reward weighting; ``expected.json`` holds
the losses of the step that followed it then) still loads and resumes to the same next step."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.text_encoder import HashedTextEncoder
from reward_forcing.train import ReDMDTrainer, TrainConfig
from trainers import PROMPTS, SMALL

DATA = Path(__file__).parent / "data" / "redmd-v1"
CONFIG = dict(
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
    save_every=100,
    weighting="none",
)


def _trainer(out_dir: Path, seed: int) -> ReDMDTrainer:
    torch.manual_seed(seed)  # another init than the saved run's: the state must come from the file
    gen, critic = CausalWanModel(SMALL), CausalWanModel(SMALL)
    torch.manual_seed(99)  # the frozen teacher is not in checkpoints: built as the saved run built it
    teacher = CausalWanModel(SMALL)
    text = HashedTextEncoder(SMALL.text_dim, SMALL.text_len)
    return ReDMDTrainer(TrainConfig(out_dir=str(out_dir), **CONFIG), gen, critic, teacher, text, PROMPTS)


def test_old_checkpoint_loads_and_resumes_to_the_same_next_step(tmp_path):
    shutil.copy(DATA / "checkpoint-00000002.pt", tmp_path)
    trainer = _trainer(tmp_path, seed=123)
    assert trainer.resume() == tmp_path / "checkpoint-00000002.pt"
    assert trainer.step == 2
    logs = trainer.train_step()
    expected = json.loads((DATA / "expected.json").read_text())["next_step"]
    for name, value in expected.items():
        assert logs[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
