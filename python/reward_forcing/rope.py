"""Wan's 3-D RoPE as the two tables the streaming ops take (docs/design.md §2 "RoPE").

The angle of channel pair ``i`` of a token at spatial index ``t`` of a frame at time index ``pos`` is
``pos * freqs[i] + spatial[t, i]``; pairs are *adjacent* channels (2i, 2i+1). Head dim 128 splits into
44 time, 42 height and 42 width channels, each axis with its own ``theta^(-2i/d_axis)`` table.
"""

from __future__ import annotations

import torch


def _axis_freqs(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def wan_rope_tables(head_dim: int, height: int, width: int, theta: float = 10000.0):
    """Returns ``(freqs [D/2], spatial [height*width, D/2])``, both float64, for a frame of
    ``height x width`` tokens (row-major) and Wan's split of ``head_dim`` into time/height/width."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6, got {head_dim}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    d_hw = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_hw
    f_t, f_h, f_w = _axis_freqs(d_t, theta), _axis_freqs(d_hw, theta), _axis_freqs(d_hw, theta)
    half = head_dim // 2
    freqs = torch.zeros(half, dtype=torch.float64)
    freqs[: d_t // 2] = f_t
    hh, ww = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    spatial = torch.zeros(height * width, half, dtype=torch.float64)
    spatial[:, d_t // 2 : d_t // 2 + d_hw // 2] = hh.reshape(-1, 1) * f_h
    spatial[:, d_t // 2 + d_hw // 2 :] = ww.reshape(-1, 1) * f_w
    return freqs, spatial


def rope_cos_sin(freqs: torch.Tensor, spatial: torch.Tensor, positions: torch.Tensor, dtype):
    """cos/sin ``[len(positions)*T, D/2]`` for whole frames at the given time ``positions``
    (a 1-D tensor, may live on any device; float64 math, result in ``dtype``)."""
    pos = positions.to(device=freqs.device, dtype=torch.float64)
    ang = pos.view(-1, 1, 1) * freqs.view(1, 1, -1) + spatial.unsqueeze(0)
    ang = ang.reshape(-1, freqs.shape[0])
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False):
    """Rotates adjacent channel pairs of ``x [B, L, H, D]`` by the angles of ``cos/sin [L, D/2]``
    (by minus them when ``inverse``); computes and returns in ``cos.dtype``."""
    b, n, h, d = x.shape
    xs = x.to(cos.dtype).reshape(b, n, h, d // 2, 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    c = cos.to(x.device).view(1, n, 1, -1)
    s = sin.to(x.device).view(1, n, 1, -1)
    if inverse:
        s = -s
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).reshape(b, n, h, d)
