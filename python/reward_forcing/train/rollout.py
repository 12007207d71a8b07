"""Self-forcing rollout of the causal generator (docs/design.md §5): the clip is generated chunk by chunk
from the generator's own outputs through the streaming cache, exactly as at inference.

One exit step is drawn per iteration, the same for every chunk and every rank; the steps before it
run without grad, the exit step's forward carries the gradient, and the clean chunk's t = 0 pass
writes the cache without grad (the attention op's backward keeps its own copy of the context, so
these in-place writes cannot corrupt it).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.causal_wan import CausalWanModel, TextKV
from ..scheduler import FewStepFlowSchedule


def draw_exit_step(step: int, num_steps: int, seed: int = 0) -> int:
    """The exit step of training iteration ``step``: from a generator seeded by ``(seed, step)``,
    so every rank (and a resumed run) draws the same one without communicating."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return int(torch.randint(num_steps, (1,), generator=gen))


def rollout(
    model: CausalWanModel,
    text: TextKV,
    noise: torch.Tensor,
    cache,
    exit_step: int,
    schedule: FewStepFlowSchedule | None = None,
    randn: Callable[[tuple], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generates ``noise.shape[2] / cache.chunk_frames`` chunks; returns the clean latents ``x0
    [B, C, F, H, W]`` (float32), differentiable through each chunk's exit-step forward when grad
    is enabled. ``noise [B, C, F, H, W]`` is each chunk's first input; the re-noising between steps
    draws ``randn(shape)`` (default ``torch.randn`` on noise's device). ``cache`` is reset first."""
    schedule = schedule or FewStepFlowSchedule()
    if not 0 <= exit_step < len(schedule):
        raise ValueError(f"exit_step must be in [0, {len(schedule)}), got {exit_step}")
    c = cache.chunk_frames
    if noise.shape[2] % c:
        raise ValueError(f"{noise.shape[2]} latent frames are not a multiple of chunk_frames={c}")
    randn = randn or (lambda shape: torch.randn(shape, device=noise.device))
    cache.reset()
    chunks = []
    for x in noise.split(c, 2):
        # the steps before the exit step without grad; the exit step in the caller's grad mode
        x0 = schedule.denoise(
            x,
            lambda x, t: model.forward_chunk(x, t, text, cache),
            lambda x0: randn(x0.shape).to(x.dtype),
            stop=exit_step + 1,
        )
        with torch.no_grad():
            model.forward_chunk(x0.detach(), 0.0, text, cache, update_cache=True)
        chunks.append(x0)
    return torch.cat(chunks, 2)
