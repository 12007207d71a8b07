"""Re-DMD training (docs/design.md §5): DMD / Re-DMD formulas, rewards, self-forcing rollout, trainers."""

from .config import TrainConfig
from .dmd import critic_weights, denoising_loss, dmd_gradient, dmd_loss, reward_weights, sample_timesteps
from .rewards import FlowMotionReward, Reward
from .rollout import draw_exit_step, rollout
from .checkpoints import latest_checkpoint
from .loop import TrainLoop
from .ode_init import ODEInitTrainer
from .redmd import ReDMDTrainer
from .teacher import TeacherTrainer
from .vlm_reward import VLMReward

__all__ = [
    "TrainConfig",
    "TrainLoop",
    "ReDMDTrainer",
    "ODEInitTrainer",
    "TeacherTrainer",
    "latest_checkpoint",
    "Reward",
    "FlowMotionReward",
    "VLMReward",
    "rollout",
    "draw_exit_step",
    "sample_timesteps",
    "dmd_gradient",
    "dmd_loss",
    "reward_weights",
    "critic_weights",
    "denoising_loss",
]
