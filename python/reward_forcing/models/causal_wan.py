"""Causal Wan2.1 text-to-video transformer (docs/design.md §4), parameter names as in the original Wan code.

One set of weights, two attention modes:

* :meth:`CausalWanModel.forward` — the whole clip at once: bidirectional attention with 3-D RoPE at
  absolute positions (teacher, critic), or block-causal with ``chunk_frames``.
* :meth:`CausalWanModel.forward_chunk` — streaming: a chunk's self-attention goes through a
  :class:`~reward_forcing.cache.StreamingKVCache` (EMA-Sink + window, docs/design.md §2), which applies
  RoPE itself at the absolute frame positions it tracks.

Cross-attention keys/values depend only on the prompt: :meth:`CausalWanModel.encode_text` computes
them once (a :class:`TextKV`) and both modes accept it in place of the prompt embedding.
Norms, AdaLN modulation and the time embedding are computed in float32 whatever the parameter
dtype (as Wan does under autocast); everything else runs in the parameter dtype (bf16 or fp32).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import fused as fused_ops
from ..cache import CacheConfig, StreamingKVCache
from ..rope import rope_cos_sin, rope_rotate, wan_rope_tables
from ..scheduler import sigma_of
from .wan_config import WAN_1_3B, WanConfig


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding ``[cos, sin]`` of ``t [N]`` (float64, ``[N, dim]``)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def _mlp_float32(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Runs a Linear/activation stack in float32 with the weights upcast (AdaLN is precision-sensitive)."""
    x = x.float()
    for m in mlp:
        x = F.linear(x, m.weight.float(), m.bias.float()) if isinstance(m, nn.Linear) else m(x)
    return x


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in float32 for ``x [B, L, dim]`` and per-frame ``shift, scale
    [B, F, 1, dim]`` (``F = 1``: one value for all tokens); returns x's dtype."""
    xf = x.float().unflatten(1, (shift.shape[1], -1))
    return (xf * (1 + scale) + shift).flatten(1, 2).to(x.dtype)


def _gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in float32 with a per-frame ``gate [B, F, 1, dim]``; returns x's dtype."""
    f = gate.shape[1]
    out = x.float().unflatten(1, (f, -1)) + y.float().unflatten(1, (f, -1)) * gate
    return out.flatten(1, 2).to(x.dtype)


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        """In float32, returned in x's dtype (also under autocast, where the weight stays float32
        while activations are bf16: q/k must keep v's dtype for the cache)."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm in float32 whatever the parameter dtype; returns the input dtype."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class _WanAttention(nn.Module):
    """Projections ``q, k, v, o``; RMSNorm on q and k over the whole ``dim``-wide row (all heads)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def _heads(self, x):
        return x.unflatten(-1, (self.num_heads, -1))


class WanSelfAttention(_WanAttention):
    fused = False  # CausalWanModel.set_fused: both norms in one fused op

    def forward(self, x, attend):
        """``attend(q, k, v) -> [B, L, H, D]`` takes the un-rotated ``q, k, v [B, L, H, D]``."""
        if self.fused:
            q, k = fused_ops.qk_rmsnorm(self.q(x), self.k(x), self.norm_q.weight, self.norm_k.weight, self.norm_q.eps)
            q, k = self._heads(q), self._heads(k)
        else:
            q = self._heads(self.norm_q(self.q(x)))
            k = self._heads(self.norm_k(self.k(x)))
        v = self._heads(self.v(x))
        return self.o(attend(q, k, v).flatten(2))


class WanCrossAttention(_WanAttention):
    def encode(self, context):
        """Keys/values ``[B, H, L_text, D]`` of the embedded prompt."""
        k = self._heads(self.norm_k(self.k(context))).transpose(1, 2)
        v = self._heads(self.v(context)).transpose(1, 2)
        return k, v

    def forward(self, x, k, v):
        q = self._heads(self.norm_q(self.q(x))).transpose(1, 2)
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class WanAttentionBlock(nn.Module):
    fused = False  # CausalWanModel.set_fused: the per-token work through reward_forcing.fused

    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, text_kv, attend):
        """``x [B, L, dim]``; ``e [B, F, 6, dim]`` float32 (F = 1 or per frame); ``text_kv`` this
        block's cross-attention keys/values; ``attend`` the self-attention (see WanSelfAttention)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e).unsqueeze(2).unbind(3)
        if self.fused:
            eps = self.norm1.eps
            y = self.self_attn(fused_ops.layernorm_modulate(x, shift1, scale1, eps), attend)
            x = fused_ops.gated_residual(x, y, gate1)
            x = x + self.cross_attn(self.norm3(x), *text_kv)
            y = self.ffn(fused_ops.layernorm_modulate(x, shift2, scale2, eps))
            return fused_ops.gated_residual(x, y, gate2)
        x = _gated_residual(x, self.self_attn(_modulate(self.norm1(x), shift1, scale1), attend), gate1)
        x = x + self.cross_attn(self.norm3(x), *text_kv)
        return _gated_residual(x, self.ffn(_modulate(self.norm2(x), shift2, scale2)), gate2)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        out = cfg.out_dim * cfg.patch_volume
        self.head = (
            nn.Linear(cfg.dim, out)
            if not cfg.head_hidden
            else nn.Sequential(
                nn.Linear(cfg.dim, cfg.head_hidden), nn.GELU(approximate="tanh"), nn.Linear(cfg.head_hidden, out)
            )
        )
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x, e):
        """``e [B, F, dim]`` float32: the time embedding (not its 6-way projection)."""
        shift, scale = (self.modulation.float() + e.unsqueeze(2)).unsqueeze(2).unbind(3)
        return self.head(_modulate(self.norm(x), shift, scale))


@dataclass
class TextKV:
    """Cross-attention keys/values ``[B, H, L_text, D]`` of one prompt batch, one pair per block;
    made by :meth:`CausalWanModel.encode_text` and reused for every chunk and denoising step."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    pooled: torch.Tensor | None = None  # [B, dim] float32, added to the time embedding (WanConfig.text_pooled)
    layout: torch.Tensor | None = None  # [B, h * w, dim], added to the stream's first latent frame (WanConfig.layout)

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]


def _sdpa_attention(q, k, v, cos, sin, mask):
    q = rope_rotate(q, cos, sin).to(v.dtype).transpose(1, 2)
    k = rope_rotate(k, cos, sin).to(v.dtype).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask).transpose(1, 2)


X0_MIN_SIGMA = 0.05  # x0-prediction: the velocity's denominator floor (JiT's t_eps)
POSITION_FREQUENCIES = 6  # WanConfig.absolute_position: sine/cosine of pi * 2^k * (row, column), k < 6


class CausalWanModel(nn.Module):
    """Wan2.1 T2V transformer. Inputs: latents ``x [B, in_dim, F, H, W]``, timesteps ``t`` (the
    warped t in [0, 1000]: a number, ``[B]``, or ``[B, F]`` for one t per latent frame) and the
    prompt as UMT5 states ``[B, L, text_dim]`` (zero-padded to ``text_len``) or a :class:`TextKV`.
    Outputs the flow-matching velocity ``[B, out_dim, F, H, W]`` in the parameter dtype."""

    def __init__(self, config: WanConfig = WAN_1_3B):
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        if c.text_pooled:
            last = nn.Linear(c.dim, c.dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.text_pool = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.SiLU(), last)
        if c.absolute_position:
            self.position_embedding = nn.Linear(4 * POSITION_FREQUENCIES, c.dim)
            nn.init.zeros_(self.position_embedding.weight)
            nn.init.zeros_(self.position_embedding.bias)
        if c.layout:
            self.layout_embedding = nn.Linear(c.text_dim, c.dim, bias=False)
            nn.init.zeros_(self.layout_embedding.weight)
        self.blocks = nn.ModuleList(WanAttentionBlock(c) for _ in range(c.num_layers))
        self.head = WanHead(c)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def set_fused(self, enabled: bool = True) -> "CausalWanModel":
        """Runs every block's LayerNorm + modulation, gated residuals and q/k RMSNorm through
        :mod:`reward_forcing.fused` (one pass each: the C++ twin on a CPU, ``torch.compile``'d
        on CUDA). Same math; in bf16 the normalised rows skip one rounding, so outputs differ
        from the unfused model by bf16 round-off."""
        for block in self.blocks:
            blk = cast(WanAttentionBlock, block)
            blk.fused = blk.self_attn.fused = bool(enabled)
        return self

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    # ------------------------------------------------------------------ conditioning
    def encode_text(self, context: torch.Tensor) -> TextKV:
        """Per-block cross-attention K/V of ``context [B, L, text_dim]`` (UMT5 states); shorter
        prompts are zero-padded to ``text_len`` like Wan, whose model attends to the padding. A
        layout model (``WanConfig.layout``) takes ``text_len`` text states, then the layout states."""
        if context.dim() != 3 or context.shape[-1] != self.config.text_dim:
            raise ValueError(f"context must be [B, L, {self.config.text_dim}], got {tuple(context.shape)}")
        context = context.to(device=self.device, dtype=self.dtype)
        layout = None
        if self.config.layout:
            if context.shape[1] <= self.config.text_len:
                raise ValueError(
                    f"a layout model takes {self.config.text_len} text states, then one layout state per token "
                    f"of a frame; got {context.shape[1]} states (world.LayoutTextEncoder makes them)"
                )
            context, layout = (
                context[:, : self.config.text_len],
                self.layout_embedding(context[:, self.config.text_len :]),
            )
        pooled = None
        if self.config.text_pooled:  # the mean over the prompt's tokens; the zero padding is not a token
            tokens = (context != 0).any(-1, keepdim=True).float()
            mean = (context.float() * tokens).sum(1) / tokens.sum(1).clamp(min=1)
            pooled = _mlp_float32(cast(nn.Sequential, self.text_pool), mean)
        pad = self.config.text_len - context.shape[1]
        if pad > 0:
            context = F.pad(context, (0, 0, 0, pad))
        context = self.text_embedding(context)
        kv = [cast(WanAttentionBlock, block).cross_attn.encode(context) for block in self.blocks]
        return TextKV(kv, pooled, layout)

    def _text(self, context, batch: int) -> TextKV:
        text = context if isinstance(context, TextKV) else self.encode_text(context)
        if len(text.kv) != len(self.blocks) or text.batch_size != batch:
            raise ValueError(
                f"the prompt has {len(text.kv)} blocks x batch {text.batch_size}; "
                f"the model needs {len(self.blocks)} x batch {batch}"
            )
        return text

    def _time(self, t, batch: int, frames: int, pooled: torch.Tensor | None = None):
        """``(e [B, F', dim], e0 [B, F', 6, dim])`` float32, F' = 1 or ``frames``; ``pooled [B, dim]``
        (the prompt's, :class:`TextKV`) is added to the time embedding."""
        t = torch.as_tensor(t, device=self.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape[0] != batch or t.shape[1] not in (1, frames):
            raise ValueError(
                f"t must be a number, [B] or [B, F] with B={batch}, F={frames}; got shape {tuple(t.shape)}"
            )
        e = _mlp_float32(self.time_embedding, sinusoidal_embedding(self.config.freq_dim, t.flatten())).unflatten(
            0, t.shape
        )
        if pooled is not None:
            e = e + pooled[:, None].to(e.device)
        return e, _mlp_float32(self.time_projection, e).unflatten(2, (6, -1))

    # ------------------------------------------------------------------ patches
    def _grid(self, x: torch.Tensor):
        """The token grid ``(f, h, w)`` of latents ``x [B, C, F, H, W]``."""
        c = self.config
        if x.dim() != 5 or x.shape[1] != c.in_dim:
            raise ValueError(f"x must be [B, {c.in_dim}, F, H, W], got {tuple(x.shape)}")
        if any(n % p for n, p in zip(x.shape[2:], c.patch_size)):
            raise ValueError(
                f"x frames/height/width {tuple(x.shape[2:])} are not multiples of the patch size {c.patch_size}"
            )
        return tuple(n // p for n, p in zip(x.shape[2:], c.patch_size))

    def _place(self, h: int, w: int) -> torch.Tensor:
        """``[h * w, dim]``: the learned embedding of each token's place in an ``h x w`` token frame
        (row-major, as the tokens of one latent frame are)."""
        freqs = math.pi * 2.0 ** torch.arange(POSITION_FREQUENCIES, device=self.device)
        rows = ((torch.arange(h, device=self.device) + 0.5) / h)[:, None] * freqs  # [h, K]
        cols = ((torch.arange(w, device=self.device) + 0.5) / w)[:, None] * freqs  # [w, K]
        features = torch.cat(
            [
                torch.cat([rows.sin(), rows.cos()], -1)[:, None].expand(h, w, -1),
                torch.cat([cols.sin(), cols.cos()], -1)[None].expand(h, w, -1),
            ],
            -1,
        )
        return self.position_embedding(features.reshape(h * w, -1).to(self.dtype))

    def _unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], -1, f * pt, h * ph, w * pw)

    def forward_with(self, x, t, context, attentions, *, at_start: bool, blocks=None):
        """The network on latents ``x`` with block i's self-attention ``attentions[i](q, k, v)``
        (un-rotated ``[B, L, H, D]`` in, ``[B, L, H, D]`` out): the per-block hook of
        :meth:`forward`, :meth:`forward_chunk` and the accelerated paths
        (:mod:`reward_forcing.pipelines.accelerate`), whose ``blocks`` (compiled copies of
        ``self.blocks``, same weights) replace the model's own. ``at_start``: ``x`` begins with
        the stream's first latent frame (where a layout applies)."""
        grid = self._grid(x)
        f, h, w = grid
        tokens = self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2)
        if self.config.absolute_position:  # tokens are frame-major: the same places in every frame
            tokens = (tokens.unflatten(1, (f, h * w)) + self._place(h, w)).flatten(1, 2)
        text = self._text(context, x.shape[0])
        if text.layout is not None and at_start:
            if text.layout.shape[1] != h * w:
                raise ValueError(f"the layout has {text.layout.shape[1]} states; a frame of this x has {h * w} tokens")
            tokens = torch.cat([tokens[:, : h * w] + text.layout.to(tokens.dtype), tokens[:, h * w :]], 1)
        e, e0 = self._time(t, x.shape[0], grid[0], text.pooled)
        for block, kv, attend in zip(blocks or self.blocks, text.kv, attentions):
            tokens = block(tokens, e0, kv, attend)
        out = self._unpatchify(self.head(tokens, e), grid)
        return out if self.config.prediction == "velocity" else self._velocity_from_x0(x, out, t)

    @staticmethod
    def _velocity_from_x0(x, x0, t):
        """``(x - x0) / max(sigma, X0_MIN_SIGMA)`` with ``sigma = t / 1000`` per sample or frame."""
        acc = torch.promote_types(x0.dtype, torch.float32)
        sigma = sigma_of(torch.as_tensor(t, dtype=acc, device=x.device))
        if sigma.dim() == 1:
            sigma = sigma[:, None]
        sigma = sigma.reshape((sigma.shape[0], 1, sigma.shape[1], 1, 1) if sigma.dim() == 2 else ())
        return ((x.to(acc) - x0.to(acc)) / sigma.clamp(min=X0_MIN_SIGMA)).to(x0.dtype)

    # ------------------------------------------------------------------ attention modes
    def forward(self, x, t, context, chunk_frames: int | None = None):
        """The whole clip at once, RoPE at absolute positions 0..F-1. Bidirectional by default;
        ``chunk_frames`` makes it block-causal (a token sees its own chunk and all earlier ones),
        which is what streaming with an unbounded cache computes."""
        f, h, w = self._grid(x)
        acc = torch.float64 if self.dtype == torch.float64 else torch.float32
        freqs, spatial = (a.to(self.device) for a in wan_rope_tables(self.config.head_dim, h, w))
        cos, sin = rope_cos_sin(freqs, spatial, torch.arange(f, device=self.device), acc)
        mask = None
        if chunk_frames is not None:
            if chunk_frames < 1:
                raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
            chunk = torch.arange(f, device=self.device).repeat_interleave(h * w) // chunk_frames
            mask = chunk[:, None] >= chunk[None, :]
        attend = functools.partial(_sdpa_attention, cos=cos, sin=sin, mask=mask)
        return self.forward_with(x, t, context, [attend] * len(self.blocks), at_start=True)

    def forward_chunk(self, x, t, context, cache: StreamingKVCache, update_cache: bool = False):
        """One chunk ``x [B, C, c, H, W]`` of a stream against ``cache`` (as it stands before the
        chunk). ``update_cache=True`` (the clean t = 0 pass) then appends the chunk's un-rotated
        K/V to every layer's cache: eviction and EMA-Sink update (docs/design.md §2)."""
        self.check_cache(x, cache)
        attentions = [functools.partial(cache.layer(i).attend, append=update_cache) for i in range(len(self.blocks))]
        return self.forward_with(x, t, context, attentions, at_start=cache.frames == 0)

    def check_cache(self, x, cache: StreamingKVCache):
        """The token grid of chunk ``x``, after checking that ``cache`` fits this model and chunk."""
        grid = self._grid(x)
        tokens = grid[1] * grid[2]
        if cache.num_layers != len(self.blocks) or cache.frame_tokens != tokens:
            raise ValueError(
                f"cache has {cache.num_layers} layers x {cache.frame_tokens} tokens per "
                f"frame; this model and chunk need {len(self.blocks)} x {tokens}"
            )
        return grid

    def new_cache(
        self, batch_size: int, frame_h: int, frame_w: int, config: CacheConfig | None = None, *, device=None, **geometry
    ) -> StreamingKVCache:
        """A streaming cache for this model, shaped by ``config`` (with the loose ``geometry``
        keywords of :meth:`CacheConfig.of` on top). ``frame_h x frame_w`` is the *token* grid of a
        frame (latent height / 2 x latent width / 2 for Wan's patches: 30 x 52 at 480 x 832). The
        K/V dtype (unless the config sets one) and the device default to the model's."""
        c, config = self.config, CacheConfig.of(config, **geometry)
        return StreamingKVCache(
            c.num_layers,
            batch_size,
            c.num_heads,
            c.head_dim,
            frame_tokens=frame_h * frame_w,
            config=config if config.dtype else CacheConfig.of(config, dtype=self.dtype),
            device=device if device is not None else self.device,
            rope=wan_rope_tables(c.head_dim, frame_h, frame_w),
        )
