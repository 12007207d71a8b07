"""The embedded default model's "VAE": an exact, parameter-free space-to-depth codec.

Why not a learned VAE: the procedural world (flat shapes on plain backgrounds) needs no perceptual
compression, and a codec that is a pure rearrangement costs nothing to train, decodes in
microseconds, is exactly invertible (no reconstruction error to separate from the generator's) and
has no temporal state to carry between chunks. What the transformer needs from a VAE is a short
token sequence: packing ``temporal`` frames and ``spatial x spatial`` pixels into the channels gives
64x64 RGB video at 16 fps as 16x16 latents of 192 channels per 4 frames, i.e. 64 tokens per
latent frame with Wan's 2x2 patches.

A latent frame is ``temporal`` consecutive video frames, pixel values mapped to [-1, 1]; channel
order is ``(frame, colour, dy, dx)``. Unlike Wan's VAE, the first latent frame also holds
``temporal`` frames.
"""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange


class PixelCodec:
    """``encode`` video ``[B, F, H, W, 3]`` (uint8, or float in [0, 1]) -> latents ``[B, 3 t s^2, F/t,
    H/s, W/s]``; ``decode`` latents -> video ``[B, 3, F, H, W]`` in [-1, 1]. It also serves as its
    own streaming decoder (the interface of :class:`~reward_forcing.models.vae.StreamingVAEDecoder`:
    ``reset``, ``frames_for``, ``state_dict``; there is no state)."""

    def __init__(self, spatial: int = 4, temporal: int = 4):
        if spatial < 1 or temporal < 1:
            raise ValueError(f"spatial and temporal factors must be >= 1, got {spatial}, {temporal}")
        self.spatial_scale, self.temporal_scale = int(spatial), int(temporal)

    @property
    def channels(self) -> int:
        return 3 * self.temporal_scale * self.spatial_scale**2

    def encode(self, video) -> torch.Tensor:
        video = torch.as_tensor(video)
        if video.dim() != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must be [B, F, H, W, 3], got {tuple(video.shape)}")
        f, h, w = video.shape[1:4]
        t, s = self.temporal_scale, self.spatial_scale
        if f % t or h % s or w % s:
            raise ValueError(f"video frames/height/width {f}/{h}/{w} must be multiples of {t}/{s}/{s}")
        x = video.float() / 255 if video.dtype == torch.uint8 else video.float()
        return rearrange(x * 2 - 1, "b (f t) (h p) (w q) c -> b (t c p q) f h w", t=t, p=s, q=s)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 5 or latents.shape[1] != self.channels:
            raise ValueError(f"latents must be [B, {self.channels}, F, H, W], got {tuple(latents.shape)}")
        t, s = self.temporal_scale, self.spatial_scale
        video = rearrange(latents.float(), "b (t c p q) f h w -> b c (f t) (h p) (w q)", t=t, c=3, p=s, q=s)
        return video.clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ streaming-decoder interface
    def reset(self) -> None:
        """Nothing to reset: every latent frame decodes on its own."""

    def frames_for(self, latent_frames: int, first: bool) -> int:
        return latent_frames * self.temporal_scale

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"a PixelCodec has no state, got keys {sorted(state)}")


def streaming_decoder(vae):
    """The chunk-by-chunk decoder of ``vae``: the codec itself for a :class:`PixelCodec`, a
    :class:`~reward_forcing.models.tiny_decoder.StreamingTinyDecoder` for the light decoder, else
    a :class:`~reward_forcing.models.vae.StreamingVAEDecoder` around a Wan VAE."""
    from .tiny_decoder import StreamingTinyDecoder, TinyDecoder

    if isinstance(vae, PixelCodec):
        return vae
    if isinstance(vae, TinyDecoder):
        return StreamingTinyDecoder(vae)
    from .vae import StreamingVAEDecoder

    return StreamingVAEDecoder(vae)


def vae_video_decoder(vae) -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised latents ``[B, C, F, H, W]`` -> whole videos ``[B, F', H', W', 3]`` in [0, 1]
    (float32), decoded causally as at inference by :func:`streaming_decoder` (the trainers'
    rewards score these)."""
    decoder = streaming_decoder(vae)

    def decode(latents):
        decoder.reset()
        video = decoder.decode(latents)
        decoder.reset()
        return ((video.float() + 1) / 2).permute(0, 2, 3, 4, 1)

    return decode
