"""Fused per-token work of a Wan block: the memory-bound steps between the GEMMs and attention.

Three ops, each with a pure-PyTorch reference (``*_reference``: the contract), the C++ CPU twin
(``torch.ops.reward_forcing.*``, ``csrc/cpu/fused_cpu.cpp``: one pass per row) and a CUDA kernel
(``csrc/cuda/fused_cuda.cu``: one thread block per row); on CUDA without our kernels the
reference compiled by ``torch.compile`` (inductor emits one fused kernel per op).
``x``, ``y``, ``q``, ``k``: ``[B, L, D]``; per-frame vectors ``shift``, ``scale``, ``gate``:
``[B, F, 1, D]`` (or ``[B, F, D]``) in float32 (float64 for float64 rows),
``L`` a multiple of ``F``, token ``l`` belonging to frame ``l // (L / F)``. Math in float32
(float64 for float64), outputs in the rows' dtype.

* :func:`layernorm_modulate` ``= LayerNorm(x) * (1 + scale) + shift`` (no affine): Wan's
  ``norm1``/``norm2`` followed by the AdaLN modulation. Unlike the unfused block, the normalised
  rows are not rounded to the model dtype in between (bf16: one rounding instead of two).
* :func:`gated_residual` ``= x + y * gate``.
* :func:`qk_rmsnorm` ``= (RMSNorm(q) * wq, RMSNorm(k) * wk)`` over the whole ``dim`` row (all
  heads), q and k in one call. RoPE is not part of it: in the streaming path the cache's
  ``stage_chunk`` already rotates q and k in the same pass that writes the ring.

:meth:`CausalWanModel.set_fused <reward_forcing.models.causal_wan.CausalWanModel.set_fused>`
switches a model's blocks to these ops (inference; with autograd the references run).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._extension import HAS_CPP, HAS_CUDA_KERNELS

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- references
def _per_frame(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``[B, F, 1, D]`` or ``[B, F, D]`` -> ``[B, F, 1, D]`` in x's accumulation dtype."""
    return (p.unsqueeze(2) if p.dim() == 3 else p).to(_acc(x.dtype))


def layernorm_modulate_reference(x, shift, scale, eps: float):
    acc, shift, scale = _acc(x.dtype), _per_frame(x, shift), _per_frame(x, scale)
    xn = F.layer_norm(x.to(acc), (x.shape[-1],), eps=eps).unflatten(1, (shift.shape[1], -1))
    return (xn * (1 + scale) + shift).flatten(1, 2).to(x.dtype)


def gated_residual_reference(x, y, gate):
    acc, gate = _acc(x.dtype), _per_frame(x, gate)
    f = gate.shape[1]
    out = x.to(acc).unflatten(1, (f, -1)) + y.to(acc).unflatten(1, (f, -1)) * gate
    return out.flatten(1, 2).to(x.dtype)


def qk_rmsnorm_reference(q, k, wq, wk, eps: float):
    acc = _acc(q.dtype)

    def norm(x, w):
        xf = x.to(acc)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.to(acc)).to(x.dtype)

    return norm(q, wq), norm(k, wk)


# ----------------------------------------------------------------------------- checks
def _check_rows(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] == 0:
        raise ValueError(f"{name} must be [B, L, D] with D > 0, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")


def _check_frames(name, p, x):
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(p).__name__}")
    shape = tuple(p.shape)
    if p.dim() == 4 and shape[2] == 1:
        shape = shape[:2] + shape[3:]
    if len(shape) != 3 or shape[0] != x.shape[0] or shape[2] != x.shape[2]:
        raise ValueError(
            f"{name} must be [B, F, 1, D] or [B, F, D] with B={x.shape[0]}, D={x.shape[2]}, got {tuple(p.shape)}"
        )
    if shape[1] == 0 or x.shape[1] % shape[1]:
        raise ValueError(f"{name}: {x.shape[1]} tokens are not a multiple of {shape[1]} frames")
    if p.device != x.device:
        raise ValueError(f"{name} is on {p.device}, the rows on {x.device}")


def _native(*xs) -> bool:
    """Whether our op serves this call: no autograd, and the C++ twin (CPU tensors) or the CUDA
    kernels (CUDA tensors) are built."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return False
    if all(x.device.type == "cpu" for x in xs):
        return HAS_CPP
    return HAS_CUDA_KERNELS and all(x.is_cuda for x in xs)


def _compiled(reference):
    """On CUDA without our kernels (no autograd): the reference through ``torch.compile`` (made once per op; inside
    an already compiled region the reference is traced as is)."""

    @functools.cache
    def compiled():
        return torch.compile(reference, dynamic=False)

    def run(*args):
        if torch.compiler.is_compiling():
            return reference(*args)
        return compiled()(*args)

    return run


_compiled_layernorm_modulate = _compiled(layernorm_modulate_reference)
_compiled_gated_residual = _compiled(gated_residual_reference)
_compiled_qk_rmsnorm = _compiled(qk_rmsnorm_reference)


def _cuda(*xs) -> bool:
    return all(x.is_cuda for x in xs) and not (torch.is_grad_enabled() and any(x.requires_grad for x in xs))


# ----------------------------------------------------------------------------- ops
def layernorm_modulate(x, shift, scale, eps: float = 1e-6):
    """``LayerNorm(x) * (1 + scale) + shift`` per frame, one pass (see the module doc)."""
    _check_rows("x", x)
    _check_frames("shift", shift, x)
    _check_frames("scale", scale, x)
    if _native(x, shift, scale):
        b, d = x.shape[0], x.shape[2]
        s, c = (p.reshape(b, -1, d).to(_acc(x.dtype)).contiguous() for p in (shift, scale))
        return torch.ops.reward_forcing.layernorm_modulate(x, s, c, float(eps))
    if _cuda(x, shift, scale):
        return _compiled_layernorm_modulate(x, shift, scale, float(eps))
    return layernorm_modulate_reference(x, shift, scale, eps)


def gated_residual(x, y, gate):
    """``x + y * gate`` per frame, one pass."""
    _check_rows("x", x)
    _check_rows("y", y)
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} and y {tuple(y.shape)} {y.dtype} differ")
    _check_frames("gate", gate, x)
    if _native(x, y, gate):
        g = gate.reshape(x.shape[0], -1, x.shape[2]).to(_acc(x.dtype)).contiguous()
        return torch.ops.reward_forcing.gated_residual(x, y, g)
    if _cuda(x, y, gate):
        return _compiled_gated_residual(x, y, gate)
    return gated_residual_reference(x, y, gate)


def qk_rmsnorm(q, k, wq, wk, eps: float = 1e-6):
    """``(RMSNorm(q) * wq, RMSNorm(k) * wk)`` over the last dim, both in one call."""
    _check_rows("q", q)
    _check_rows("k", k)
    if q.shape != k.shape or q.dtype != k.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype} and k {tuple(k.shape)} {k.dtype} differ")
    for name, w in (("wq", wq), ("wk", wk)):
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (q.shape[-1],):
            raise ValueError(f"{name} must be a [{q.shape[-1]}] tensor")
    if _native(q, k, wq, wk):
        return torch.ops.reward_forcing.qk_rmsnorm(q, k, wq, wk, float(eps))
    if _cuda(q, k, wq, wk):
        return _compiled_qk_rmsnorm(q, k, wq, wk, float(eps))
    return qk_rmsnorm_reference(q, k, wq, wk, eps)


if HAS_CPP:

    @torch.library.register_fake("reward_forcing::layernorm_modulate")
    def _(x, shift, scale, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("reward_forcing::gated_residual")
    def _(x, y, gate):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("reward_forcing::qk_rmsnorm")
    def _(q, k, wq, wk, eps):
        return (
            torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
        )
