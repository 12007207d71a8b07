"""A light streaming decoder for Wan-2.1 latents with the TAEHV architecture (``taew2_1`` weights).

The layer layout, key names and conventions follow the public TAEHV repository
(https://github.com/madebyollin/taehv, ``taehv.py`` and ``README.md``, read Dec 2026): a
``decoder`` ``nn.Sequential`` whose indices are the checkpoint's key prefixes —

====  ==========================================  =====================================
idx   layer                                       checkpoint keys (Wan 2.1: z = 16)
====  ==========================================  =====================================
0     Clamp ``3 tanh(x / 3)``                     -
1     Conv 3x3 z -> 256                           ``decoder.1.weight/bias``
2     ReLU                                        -
3-5   MemBlock(256)                               ``decoder.{3,4,5}.conv.{0,2,4}.weight/bias``
6     nearest Upsample x2                         -
7     TGrow(256, stride 1)                        ``decoder.7.conv.weight [256, 256, 1, 1]``
8     Conv 3x3 256 -> 128, no bias                ``decoder.8.weight``
9-11  MemBlock(128)                               ``decoder.{9,10,11}.conv.{0,2,4}.*``
12    Upsample x2; 13 TGrow(128, stride 2)        ``decoder.13.conv.weight [256, 128, 1, 1]``
14    Conv 3x3 128 -> 64, no bias                 ``decoder.14.weight``
15-17 MemBlock(64)                                ``decoder.{15,16,17}.conv.{0,2,4}.*``
18    Upsample x2; 19 TGrow(64, stride 2)         ``decoder.19.conv.weight [128, 64, 1, 1]``
20    Conv 3x3 64 -> 64, no bias                  ``decoder.20.weight``
21    ReLU; 22 Conv 3x3 64 -> 3                   ``decoder.22.weight/bias``
====  ==========================================  =====================================

A MemBlock maps a frame ``x`` and the *previous* frame's input to the same block (zeros at the
stream start) to ``relu(conv(cat[x, past]) + x)``, ``conv`` = conv3x3(2n -> n), ReLU, conv3x3,
ReLU, conv3x3. A TGrow is a 1x1 conv to ``stride * n`` channels read as ``stride`` consecutive
frames. So each latent frame becomes 4 frames (8x space); the stream's first 3 frames are
dropped, which aligns the output with Wan's VAE: ``1 + 4 (F - 1)`` frames for ``F`` latents.
TAEHV takes the latents the diffusion model produces as they are (no mean/std) and outputs
[0, 1]; here the output is mapped to [-1, 1] like the Wan VAE's. Some releases store the
stride-1 TGrow with ``2 * 256`` output channels; like the reference loader, its last 256 are the
ones used. The checkpoint's ``encoder.*`` keys are accepted and ignored.

Checked once against the public reference code (``taehv.py`` at commit 1f14a56, not part of this
repository): its ``TAEHV()`` Wan-2.1 state dict, random weights, loads strictly here, and the
whole-clip and chunked decodes equal its ``decode_video`` (parallel and sequential) to 3e-17 in
float64. The real ``taew2_1`` weights were not available (the repository's weight files are
stored out of git), so its output quality relative to the Wan VAE is unmeasured here; the
tests check the key layout and the streaming exactness with random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = (256, 128, 64, 64)
TIME_UPSCALE = (False, True, True)  # taew2_1: 4x in time
PREFIX = "decoder."


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """``relu(conv(cat[x, past]) + x)`` (the decoder's blocks keep their width: identity skip)."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))

    def forward(self, x, past):
        return F.relu(self.conv(torch.cat([x, past], 1)) + x)


class TGrow(nn.Module):
    """One frame ``[N, n, H, W]`` -> ``stride`` frames: a 1x1 conv to ``stride * n`` channels."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x):
        return self.conv(x)


class TinyDecoder(nn.Module):
    """The TAEHV decoder for ``latent_channels``-channel latents (16: Wan 2.1). Parameters live
    under ``decoder.<idx>`` exactly as in a TAEHV checkpoint. :meth:`forward` decodes a whole
    clip; :class:`StreamingTinyDecoder` decodes it chunk by chunk with the same result."""

    def __init__(self, latent_channels: int = 16):
        super().__init__()
        self.latent_channels = latent_channels
        n = WIDTHS
        layers: list[nn.Module] = [Clamp(), _conv(latent_channels, n[0]), nn.ReLU()]
        for level, grow in enumerate(TIME_UPSCALE):
            layers += [MemBlock(n[level]) for _ in range(3)]
            layers += [
                nn.Upsample(scale_factor=2),
                TGrow(n[level], 2 if grow else 1),
                _conv(n[level], n[level + 1], bias=False),
            ]
        layers += [nn.ReLU(), _conv(n[3], 3)]
        self.decoder = nn.Sequential(*layers)
        self.spatial_scale = 8
        self.temporal_scale = 2 ** sum(TIME_UPSCALE)

    @property
    def frames_to_trim(self) -> int:
        return self.temporal_scale - 1

    def run(self, x: torch.Tensor, memory: list) -> torch.Tensor:
        """Frames ``x [B, T, C, h, w]`` through the layers, time-parallel within the call;
        ``memory[i]`` (updated in place) is MemBlock i's input at the last frame it saw (None at
        the stream start). Returns raw output frames ``[B, T * temporal_scale, 3, H, W]``."""
        b = x.shape[0]
        x = x.flatten(0, 1)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                frames = x.unflatten(0, (b, -1))
                last = memory[i] if memory[i] is not None else torch.zeros_like(frames[:, :1])
                past = torch.cat([last, frames[:, :-1]], 1).flatten(0, 1)
                memory[i] = frames[:, -1:].clone()
                x = layer(x, past)
            elif isinstance(layer, TGrow):
                y = layer(x)  # [B*T, stride*n, H, W] -> frames in order
                x = y.unflatten(1, (layer.stride, -1)).flatten(0, 1)
            else:
                x = layer(x)
        return x.unflatten(0, (b, -1))

    def memory_slots(self) -> int:
        return len(self.decoder)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole clip: latents ``[B, z, F, h, w]`` -> video ``[B, 3, 1 + 4 (F - 1), H, W]`` in
        [-1, 1]."""
        x = self.run(_frames_first(self, latents), [None] * self.memory_slots())
        return _to_video(x[:, self.frames_to_trim :])


def _frames_first(decoder: TinyDecoder, latents: torch.Tensor) -> torch.Tensor:
    if latents.dim() != 5 or latents.shape[1] != decoder.latent_channels:
        raise ValueError(f"latents must be [B, {decoder.latent_channels}, F, h, w], got {tuple(latents.shape)}")
    param = next(decoder.decoder[1].parameters())  # the first conv's weight
    return latents.to(device=param.device, dtype=param.dtype).transpose(1, 2)


def _to_video(frames: torch.Tensor) -> torch.Tensor:
    """``[B, T, 3, H, W]`` in ~[0, 1] -> ``[B, 3, T, H, W]`` in [-1, 1]."""
    return (frames.clamp(0, 1) * 2 - 1).transpose(1, 2)


class StreamingTinyDecoder:
    """Decodes one stream's latent chunks with :class:`TinyDecoder`, carrying every MemBlock's
    last input across calls, so chunk-by-chunk decoding gives the frames of one whole-clip
    decode. The interface of :class:`~reward_forcing.models.vae.StreamingVAEDecoder`."""

    def __init__(self, decoder: TinyDecoder):
        self.model = decoder
        self.spatial_scale, self.temporal_scale = decoder.spatial_scale, decoder.temporal_scale
        self.reset()

    def reset(self) -> None:
        self._memory: list = [None] * self.model.memory_slots()
        self._to_trim = self.model.frames_to_trim

    def frames_for(self, latent_frames: int, first: bool) -> int:
        return latent_frames * self.temporal_scale - (self.temporal_scale - 1 if first else 0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, z, f, h, w]`` -> video ``[B, 3, frames, H, W]`` in [-1, 1]."""
        x = self.model.run(_frames_first(self.model, latents), self._memory)
        trim, self._to_trim = min(self._to_trim, x.shape[1]), max(0, self._to_trim - x.shape[1])
        return _to_video(x[:, trim:])

    def state_dict(self) -> dict:
        return {"memory": [m.clone() if m is not None else None for m in self._memory], "to_trim": self._to_trim}

    def load_state_dict(self, state: dict) -> None:
        memory = state["memory"]
        if len(memory) != self.model.memory_slots():
            raise ValueError(f"tiny decoder state has {len(memory)} entries, the decoder {self.model.memory_slots()}")
        device = self.model.decoder[1].weight.device
        self._memory = [m.to(device).clone() if m is not None else None for m in memory]
        self._to_trim = int(state["to_trim"])


# ----------------------------------------------------------------------------- loading
def is_tiny_decoder_checkpoint(path) -> bool:
    """Whether ``path`` is a TAEHV weights file (``.pth``/``.safetensors`` with ``decoder.1``
    and ``decoder.3.conv.0`` weights); reads only the key names of a safetensors file."""
    path = Path(path)
    if not path.is_file() or path.suffix not in (".pth", ".pt", ".safetensors"):
        return False
    keys = _keys(path)
    return {"decoder.1.weight", "decoder.3.conv.0.weight"} <= keys


def _keys(path: Path) -> set:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return set(f.keys())
    from .loading import read_checkpoint_file

    try:
        return set(read_checkpoint_file(path))
    except Exception:
        return set()


def load_tiny_decoder(path, *, dtype: torch.dtype = torch.float32, device="cpu") -> TinyDecoder:
    """A :class:`TinyDecoder` from a local TAEHV file (``taew2_1.pth`` or ``.safetensors``),
    loaded strictly: every decoder key with its shape, nothing else but ``encoder.*`` keys;
    problems raise ValueError naming the file and the keys."""
    from .loading import check_state_dict, read_checkpoint_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tiny decoder weights at {path}")
    state = read_checkpoint_file(path)
    first = state.get("decoder.1.weight")
    if first is None or first.dim() != 4:
        raise ValueError(f"{path} is not a TAEHV checkpoint (no decoder.1.weight)")
    state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    with torch.device("meta"):
        model = TinyDecoder(latent_channels=first.shape[1])
    for i, layer in enumerate(model.decoder):  # a stride-1 TGrow stored with more channels
        key = f"{PREFIX}{i}.conv.weight"
        if isinstance(layer, TGrow) and key in state:
            want = layer.conv.weight.shape[0]
            if state[key].shape[0] > want and state[key].shape[0] % want == 0:
                state[key] = state[key][-want:]
    try:
        check_state_dict(model, state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).eval()
