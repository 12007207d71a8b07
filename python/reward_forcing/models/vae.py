"""The Wan VAE (diffusers' ``AutoencoderKLWan``) and its causal streaming decoder (docs/design.md §4).

diffusers is imported only when a VAE is loaded or built: the decoder itself just drives an
``AutoencoderKLWan`` instance it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


# The VAE file of Wan's release folders (Wan2.1-T2V-1.3B / 14B).
WAN_VAE_FILE = "Wan2.1_VAE.pth"


def load_wan_vae(path, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """An ``AutoencoderKLWan`` from local files, never a download: a diffusers folder (``config.json``
    + weights), a diffusers pipeline folder with ``vae/``, or Wan's own checkpoint
    (``Wan2.1_VAE.pth``, or a Wan release folder holding it; keys mapped by diffusers'
    ``convert_wan_vae_to_diffusers``)."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if path.is_dir() and (path / WAN_VAE_FILE).is_file():
        path = path / WAN_VAE_FILE
    if path.is_file():
        return _load_wan_vae_file(path, dtype).to(device).eval()
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            vae = AutoencoderKLWan.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
            return vae.to(device).eval()
    raise FileNotFoundError(
        f"no Wan VAE at {path}: expected a folder with config.json (or "
        f"vae/config.json, or {WAN_VAE_FILE}) or a Wan VAE .pth file"
    )


def load_vae(path, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """The decoder behind ``--vae PATH``: a TAEHV weights file (``taew2_1.pth`` /
    ``.safetensors``) gives the light :class:`~reward_forcing.models.tiny_decoder.TinyDecoder`,
    anything else the Wan VAE of :func:`load_wan_vae`."""
    from .tiny_decoder import is_tiny_decoder_checkpoint, load_tiny_decoder

    if is_tiny_decoder_checkpoint(path):
        return load_tiny_decoder(path, dtype=dtype, device=device)
    return load_wan_vae(path, dtype=dtype, device=device)


def _load_wan_vae_file(path: Path, dtype: torch.dtype):
    """Wan's original VAE state dict -> diffusers' ``AutoencoderKLWan`` with the Wan2.1 layout (its
    default config; the base width is read off the weights), built on the meta device and loaded
    strictly: missing, unexpected or mis-shaped keys raise ValueError naming them."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from .loading import check_state_dict, read_checkpoint_file

    state = read_checkpoint_file(path)
    if "encoder.conv1.weight" not in state or "conv1.weight" not in state:
        raise ValueError(f"{path} is not a Wan VAE checkpoint (no encoder.conv1 / conv1 weights)")
    z_dim = state["conv1.weight"].shape[0] // 2
    if z_dim != 16:
        raise ValueError(f"{path}: {z_dim} latent channels; only the Wan2.1 VAE (16) is supported")
    with torch.device("meta"):  # Any: diffusers' model classes do not type as nn.Module
        vae: Any = AutoencoderKLWan(base_dim=state["encoder.conv1.weight"].shape[0], z_dim=z_dim)
    state = convert_wan_vae_to_diffusers(state)
    try:
        check_state_dict(vae, state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return vae


def tiny_random_wan_vae(seed: int = 0, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """A RANDOM ``AutoencoderKLWan`` with the Wan2.1 layout (16 latent channels, 8x space, 4x time)
    but 8 base channels and one residual block per level: for tests and the random demo model."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae: Any = AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        )
    vae = vae.to(device).eval()
    return vae if dtype == torch.float32 else vae.to(dtype)  # diffusers warns on every dtype cast


class StreamingVAEDecoder:
    """Decodes the latent chunks of one stream causally, keeping the decoder's temporal feature
    cache between calls, so that decoding chunk by chunk gives exactly the frames of one
    whole-clip ``vae.decode`` (diffusers' ``decode`` clears that cache on every call, which would
    give each chunk a "first frame" and seams).

    Input latents are *normalised* (as the transformer produces them); they are un-normalised
    with the VAE's per-channel ``latents_mean``/``latents_std`` first. The first latent frame of
    a stream decodes to 1 video frame, every later one to ``temporal_scale`` frames.
    """

    def __init__(self, vae):
        self.vae = vae
        cfg = vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(shape)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(shape)
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self._convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        patch = cfg.patch_size or 1
        self.spatial_scale = 2 ** (len(cfg.dim_mult) - 1) * patch
        self.temporal_scale = 2 ** sum(cfg.temperal_downsample)
        self.reset()

    def reset(self) -> None:
        """Starts a new stream."""
        self._feat_cache: list = [None] * self._convs
        self._started = False

    def frames_for(self, latent_frames: int, first: bool) -> int:
        """Video frames decoded from ``latent_frames`` latents (``first``: at the stream's start)."""
        return latent_frames * self.temporal_scale - (self.temporal_scale - 1 if first else 0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, z, f, h, w]`` -> video ``[B, 3, frames, H, W]`` in [-1, 1]
        (the VAE's dtype)."""
        vae = self.vae
        param = next(vae.parameters())
        z = latents.float() * self._std.to(latents.device) + self._mean.to(latents.device)
        x = vae.post_quant_conv(z.to(device=param.device, dtype=param.dtype))
        out = []
        for i in range(x.shape[2]):
            # diffusers' decoders walk the cache list with a fresh index per latent frame
            out.append(
                vae.decoder(
                    x[:, :, i : i + 1], feat_cache=self._feat_cache, feat_idx=[0], first_chunk=not self._started
                )
            )
            self._started = True
        video = torch.cat(out, 2)
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=vae.config.patch_size)
        return video.clamp(-1.0, 1.0)

    def state_dict(self) -> dict:
        """A copy of the temporal cache (entries: ``None``, diffusers' ``"Rep"`` marker or tensors)."""
        return {
            "feat_cache": [x.clone() if torch.is_tensor(x) else x for x in self._feat_cache],
            "started": self._started,
        }

    def load_state_dict(self, state: dict) -> None:
        cache = state["feat_cache"]
        if len(cache) != self._convs:
            raise ValueError(f"VAE decoder cache has {len(cache)} entries, this VAE needs {self._convs}")
        param = next(self.vae.parameters())
        self._feat_cache = [x.to(param.device).clone() if torch.is_tensor(x) else x for x in cache]
        self._started = bool(state["started"])
