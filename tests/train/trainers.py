"""Builders the trainer tests share (imported by test modules and by spawned gloo workers)."""

import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import HashedTextEncoder
from reward_forcing.models.vae import tiny_random_wan_vae
from reward_forcing.models.wan_config import WAN_TINY, WanConfig
from reward_forcing.train import FlowMotionReward, ReDMDTrainer
from reward_forcing.models.pixel_codec import vae_video_decoder

PROMPTS = ["a red ball rolls", "waves on a beach", "a dog runs in the park"]
# The world teacher stage at toy size: 12-channel pixel latents, a 2-block model.
CODEC = PixelCodec(spatial=2, temporal=1)
SMALL = WanConfig(
    dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=12, out_dim=12, text_dim=16, freq_dim=16, text_len=8
)


def redmd_trainer(cfg, seed=0) -> ReDMDTrainer:
    """A ReDMDTrainer on random WAN_TINY models (critic = generator's init, a fixed teacher)."""
    torch.manual_seed(seed)
    gen = CausalWanModel(WAN_TINY)
    critic = CausalWanModel(WAN_TINY)
    critic.load_state_dict(gen.state_dict())
    torch.manual_seed(99)  # the frozen teacher is not in the checkpoint: the same in every run
    teacher = CausalWanModel(WAN_TINY)
    text = HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len)
    reward = decode = None
    if cfg.weighting != "none":
        reward, decode = FlowMotionReward(), vae_video_decoder(tiny_random_wan_vae())
    return ReDMDTrainer(cfg, gen, critic, teacher, text, PROMPTS, reward=reward, decode=decode)
