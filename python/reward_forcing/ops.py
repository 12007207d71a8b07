"""Streaming-attention ops: the contract shared by the CPU C++ twin, the CUDA kernels, the SDPA
path and the pure-PyTorch reference (:mod:`reward_forcing.reference`).

Storage (docs/design.md §3), per layer — ``B`` batch, ``H`` heads, ``D`` head dim, ``T`` tokens per frame,
``S`` sink frames, ``W`` window frames, ``C`` chunk frames, ring ``R = W + C`` frames:

* ``k_cache, v_cache``: ``[B, (S + R) * T, H, D]``, the compute dtype (float32/64, bfloat16, float16),
  contiguous. Frame slot ``s`` holds tokens ``[s*T, (s+1)*T)``. Slots ``[0, S)`` hold the sink's
  *rotated* compute-dtype copy; slots ``[S, S + R)`` are the ring: stream frame ``f >= S`` lives in
  slot ``S + (f - S) mod R`` with its key rotated at its absolute time index ``f``.
* ``sink_k, sink_v``: ``[B, S * T, H, D]``, float32 (any float dtype: the ``sink_dtype``), the
  running EMA of *un-rotated* keys and of values.
* ``state``: int64 ``[1]`` on the cache's device: ``n``, the frames appended so far. All positions
  derive from it on the device, so the ops never synchronise with the host on CUDA. A counter
  outside ``[0, MAX_FRAMES - c]`` is invalid input: the CPU ops raise ValueError naming it; the
  Python wrappers check the caller's host mirror (``frames_appended``, which the cache passes)
  instead of reading a CUDA ``state``; the CUDA kernels write nothing for such a counter and set a
  flag that the next CUDA op call raises on (ValueError).
* RoPE (optional): ``rope_freqs`` float64 ``[D/2]`` and ``rope_spatial`` float64 ``[T, D/2]``; the
  angle of pair ``(2i, 2i+1)`` of token ``t`` of a frame at time ``pos`` is
  ``pos * rope_freqs[i] + rope_spatial[t, i]`` (:func:`reward_forcing.rope.wan_rope_tables`).
  Without them (both ``None``) nothing is rotated.

Derived from ``n``: the sink holds ``s_f = min(n, S)`` frames; the window is the frames
``[max(S, n - W), n)`` (``n_w`` of them); the sink copy is rotated to positions ``p0 - s_f + j``
(``p0 = n - n_w``), so the relative time indices are docs/design.md §2's: sink, window oldest first, chunk.

Op schemas (``torch.ops.reward_forcing``):

``ring_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) sink_k, Tensor(d!) sink_v,
Tensor(e!) state, Tensor k, Tensor v, int frame_tokens, int sink_frames, int window_frames,
float alpha, Tensor? rope_freqs, Tensor? rope_spatial) -> ()``
    Appends the chunk ``k, v`` (``[B, c*T, H, D]``, ``1 <= c <= R - W``, un-rotated, cache dtype)
    frame by frame: frame ``f = n + i`` with ``f < S`` is copied into sink slot ``f``; otherwise its
    key is rotated at ``f`` and written with its value to its ring slot, and when the window then
    holds more than ``W`` frames the oldest, ``e = f - W``, leaves: its key is un-rotated (read from
    the cache) and sink slot ``j = (e - S) mod S`` becomes ``alpha*sink + (1-alpha)*frame`` (keys and
    values; dropped when ``S = 0``). Then the sink's rotated copy in slots ``[0, s_f)`` is refreshed
    and ``state += c``. Eviction is eager (at append), so the ``C`` ring slots after the window are
    free while the next chunk is denoised.

``sink_window_attention(Tensor q, Tensor k, Tensor v, Tensor k_cache, Tensor v_cache, Tensor state,
int frame_tokens, int sink_frames, int window_frames, float scale, Tensor? rope_freqs,
Tensor? rope_spatial) -> Tensor``
    ``q, k, v``: the chunk ``[B, c*T, H, D]``, un-rotated (rotated inside at ``n, n+1, ...``).
    Softmax attention (fp32 accumulate; fp64 for fp64) of the chunk's queries over the filled
    sink slots, the window (read in place) and the chunk itself (full attention inside the chunk).
    Returns ``[B, c*T, H, D]`` in q's dtype. Differentiable w.r.t. ``q, k, v``; the cache is a
    constant (backward works on a copy of the context taken at forward time, so later in-place
    appends cannot corrupt it).

``stage_chunk(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor state,
int frame_tokens, int sink_frames, int window_frames, Tensor? rope_freqs, Tensor? rope_spatial)
-> Tensor``
    One pass that prepares a dense attention call over the whole buffer: rotates the chunk's
    ``q`` and ``k`` at ``n, n+1, ...``, writes the rotated keys and the values of frames
    ``f >= S`` into their ring slots ``S + (f - S) mod R`` (the slots the chunk will occupy after
    ``ring_append``; outside the current context, since eviction is eager) and returns the rotated
    ``q`` in q's dtype. Not differentiable (inference path).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from . import reference
from ._extension import HAS_CPP, HAS_CUDA_KERNELS
from .rope import rope_cos_sin, rope_rotate

BACKENDS = ("auto", "kernel", "sdpa", "flash", "reference")
MAX_FRAMES = 2**52  # the largest frame counter (csrc/frame_limits.h): exact float64 positions
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- validation
def check_4d(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D [B, tokens, H, D], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16/bfloat16/float32/float64, got {x.dtype}")


def check_sizes(
    frame_tokens: int, sink_frames: int, window_frames: int, chunk_frames: int | None = None, alpha: float | None = None
) -> None:
    """Raises ValueError naming the first impossible size or alpha."""
    for name, value, low in (
        ("frame_tokens", frame_tokens, 1),
        ("sink_frames", sink_frames, 0),
        ("window_frames", window_frames, 0),
        ("chunk_frames", chunk_frames, 1),
    ):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if alpha is not None and not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def check_counter(n: int, chunk_frames: int, what: str = "state (the cache's frame counter)") -> None:
    """Raises ValueError unless a chunk of ``chunk_frames`` frames may follow ``n`` frames."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_FRAMES - chunk_frames:
        raise ValueError(
            f"{what} must be an int in [0, 2^52 - {chunk_frames}] for a "
            f"{chunk_frames}-frame chunk, got {n!r}: a corrupted or foreign cache state"
        )


def _check_chunk(
    chunk: dict,
    k_cache,
    v_cache,
    state,
    frame_tokens,
    sink_frames,
    window_frames,
    rope_freqs,
    rope_spatial,
    frames_appended=None,
) -> None:
    check_sizes(frame_tokens, sink_frames, window_frames)
    check_4d("k_cache", k_cache)
    check_4d("v_cache", v_cache)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"k_cache ({k_cache.dtype}) and v_cache ({v_cache.dtype}) dtypes differ")
    if k_cache.shape[1] % frame_tokens:
        raise ValueError(f"cache tokens {k_cache.shape[1]} are not a multiple of frame_tokens={frame_tokens}")
    ring = k_cache.shape[1] // frame_tokens - sink_frames
    if not isinstance(state, torch.Tensor) or state.dtype != torch.int64 or state.numel() != 1:
        raise TypeError("state must be an int64 tensor with one element")
    for name, x in chunk.items():
        check_4d(name, x)
        if x.dtype != k_cache.dtype:
            raise TypeError(f"{name} dtype {x.dtype} does not match the cache dtype {k_cache.dtype}")
        if x.device != k_cache.device or state.device != k_cache.device:
            raise ValueError(
                f"{name}, state and the cache must be on one device, got {x.device}, "
                f"{state.device} and {k_cache.device}"
            )
        if (x.shape[0], x.shape[2], x.shape[3]) != (k_cache.shape[0], k_cache.shape[2], k_cache.shape[3]):
            raise ValueError(
                f"{name} shape {tuple(x.shape)} does not match the cache "
                f"{tuple(k_cache.shape)} in batch, heads or head dim"
            )
        if x.shape[1] == 0 or x.shape[1] % frame_tokens:
            raise ValueError(f"{name} has {x.shape[1]} tokens: not a positive multiple of frame_tokens={frame_tokens}")
        c = x.shape[1] // frame_tokens
        if ring < window_frames + c:
            raise ValueError(
                f"the cache ring holds {ring} frames, fewer than window_frames "
                f"({window_frames}) + the chunk's {c} frames"
            )
    if frames_appended is not None:  # the host mirror: no device synchronisation
        check_counter(frames_appended, c)
    elif state.device.type == "cpu":
        check_counter(int(state.item()), c)
    if (rope_freqs is None) != (rope_spatial is None):
        raise ValueError("rope_freqs and rope_spatial must be given together")
    if rope_freqs is not None:
        d = k_cache.shape[3]
        if rope_freqs.shape != (d // 2,) or rope_spatial.shape != (frame_tokens, d // 2):
            raise ValueError(
                f"rope tables must be [D/2] and [T, D/2] = [{d // 2}] and "
                f"[{frame_tokens}, {d // 2}], got {tuple(rope_freqs.shape)} and "
                f"{tuple(rope_spatial.shape)}"
            )
        if rope_freqs.dtype != torch.float64 or rope_spatial.dtype != torch.float64:
            raise TypeError("rope tables must be float64")
        for table in (rope_freqs, rope_spatial):
            if table.device not in (k_cache.device, torch.device("cpu")):
                raise ValueError(f"rope tables must be on the cache's device or the CPU, got {table.device}")


def _resolve(backend: str, device: torch.device, op: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "kernel" and not HAS_CPP:
        raise RuntimeError("backend='kernel' needs the compiled extension reward_forcing._C")
    if backend == "kernel" and device.type == "cuda" and not HAS_CUDA_KERNELS:
        raise RuntimeError("backend='kernel' on CUDA needs reward_forcing built with CUDA")
    if backend in ("sdpa", "flash") and op == "ring_append":
        backend = "auto"  # SDPA / flash-attn only serve attention; the append runs on our ops
    if backend != "auto":
        return backend
    if device.type == "cuda":
        if op == "sink_window_attention":
            return "sdpa"
        return "kernel" if HAS_CUDA_KERNELS else "reference"
    return "kernel" if HAS_CPP else "reference"


# ----------------------------------------------------------------------------- ring_append
def ring_append(
    k_cache,
    v_cache,
    sink_k,
    sink_v,
    state,
    k,
    v,
    *,
    frame_tokens,
    sink_frames,
    window_frames,
    alpha,
    rope_freqs=None,
    rope_spatial=None,
    backend="auto",
    frames_appended: int | None = None,
) -> None:
    """Appends a chunk to the cache in place (schema and semantics in the module docstring).
    ``frames_appended``: the caller's host mirror of ``state`` (checked instead of ``state``)."""
    _check_chunk(
        {"k": k, "v": v},
        k_cache,
        v_cache,
        state,
        frame_tokens,
        sink_frames,
        window_frames,
        rope_freqs,
        rope_spatial,
        frames_appended,
    )
    check_sizes(frame_tokens, sink_frames, window_frames, alpha=alpha)
    want = (k_cache.shape[0], sink_frames * frame_tokens, k_cache.shape[2], k_cache.shape[3])
    if tuple(sink_k.shape) != want or tuple(sink_v.shape) != want:
        raise ValueError(f"sink_k/sink_v must be {want}, got {tuple(sink_k.shape)}/{tuple(sink_v.shape)}")
    args = (
        k_cache,
        v_cache,
        sink_k,
        sink_v,
        state,
        k,
        v,
        frame_tokens,
        sink_frames,
        window_frames,
        float(alpha),
        rope_freqs,
        rope_spatial,
    )
    if _resolve(backend, k_cache.device, "ring_append") == "reference":
        reference.ring_append(*args)
    else:
        torch.ops.reward_forcing.ring_append(*args)


# ----------------------------------------------------------------------------- attention
def sink_window_attention(
    q,
    k,
    v,
    k_cache,
    v_cache,
    state,
    *,
    frame_tokens,
    sink_frames,
    window_frames,
    scale=None,
    rope_freqs=None,
    rope_spatial=None,
    backend="auto",
    frames_appended: int | None = None,
):
    """A chunk's attention over sink + window + itself (schema in the module docstring).

    ``backend``: ``"kernel"`` (our C++/CUDA op), ``"sdpa"`` (PyTorch SDPA on the same storage),
    ``"flash"`` (flash-attn's ``flash_attn_func`` on the same operands as SDPA: fp16/bf16, not
    differentiable), ``"reference"`` (pure PyTorch) or ``"auto"`` (SDPA on CUDA, the C++ twin
    on CPU).
    ``frames_appended`` is the host's copy of ``state`` (the cache passes it); the SDPA path uses it
    to choose between one dense call over the whole buffer (steady state) and a gathered context.
    """
    _check_chunk(
        {"q": q, "k": k, "v": v},
        k_cache,
        v_cache,
        state,
        frame_tokens,
        sink_frames,
        window_frames,
        rope_freqs,
        rope_spatial,
        frames_appended,
    )
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k and v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    args = (q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames, window_frames, scale, rope_freqs, rope_spatial)
    chosen = _resolve(backend, q.device, "sink_window_attention")
    if chosen == "reference":
        return reference.sink_window_attention(*args)
    if chosen == "sdpa":
        return _attention_sdpa(*args, frames_appended=frames_appended)
    if chosen == "flash":
        return _attention_flash(*args, frames_appended=frames_appended)
    return torch.ops.reward_forcing.sink_window_attention(*args)


def _dense_operands(
    q,
    k,
    v,
    k_cache,
    v_cache,
    state,
    frame_tokens,
    sink_frames,
    window_frames,
    rope_freqs,
    rope_spatial,
    frames_appended=None,
):
    """Rotated queries and the keys/values ``[B, tokens, H, D]`` one dense attention call needs
    (the SDPA and flash-attn paths). In the steady state (window full, chunk filling the free
    ring slots, no grad) ``stage_chunk`` rotates q/k and puts the chunk's K/V into its free ring
    slots in one pass, and the keys/values are the whole ``[sink | ring]`` buffer; positions come
    from the device counter (CUDA-graph capturable). Otherwise (first chunks, autograd) the
    context is gathered."""
    t, s, w = frame_tokens, sink_frames, window_frames
    c = q.shape[1] // t
    ring = k_cache.shape[1] // t - s
    n = int(state.item()) if frames_appended is None else frames_appended
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if n >= s + w and c == ring - w and not needs_grad:
        args = (q, k, v, k_cache, v_cache, state, t, s, w, rope_freqs, rope_spatial)
        compiled = HAS_CUDA_KERNELS if q.device.type == "cuda" else HAS_CPP
        qr = torch.ops.reward_forcing.stage_chunk(*args) if compiled else reference.stage_chunk(*args)
        keys, values = k_cache, v_cache
    else:
        qr, kr = q, k
        if rope_freqs is not None:
            pos = state.reshape(1) + torch.arange(c, device=state.device)
            acc = torch.float64 if q.dtype == torch.float64 else torch.float32
            cos, sin = rope_cos_sin(rope_freqs, rope_spatial, pos, acc)
            qr, kr = rope_rotate(q, cos, sin).to(q.dtype), rope_rotate(k, cos, sin).to(q.dtype)
        kc, vc = reference.gather_context(k_cache, v_cache, n, t, s, w)
        keys, values = torch.cat([kc, kr], 1), torch.cat([vc, v], 1)
    return qr, keys, values


def _attention_sdpa(
    q,
    k,
    v,
    k_cache,
    v_cache,
    state,
    frame_tokens,
    sink_frames,
    window_frames,
    scale,
    rope_freqs,
    rope_spatial,
    *,
    frames_appended=None,
):
    """SDPA on the storage of docs/design.md §3 (operands: :func:`_dense_operands`)."""
    qr, keys, values = _dense_operands(
        q,
        k,
        v,
        k_cache,
        v_cache,
        state,
        frame_tokens,
        sink_frames,
        window_frames,
        rope_freqs,
        rope_spatial,
        frames_appended,
    )
    out = F.scaled_dot_product_attention(qr.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


# flash-attn's entry points, most specific first: FA3 (Hopper build), FA4 (CuTe DSL), FA2. All
# take q [B, Lq, H, D] and k, v [B, Lk, H, D] (our storage layout: no transposes) in fp16/bf16.
FLASH_MODULES = ("flash_attn_interface", "flash_attn.cute", "flash_attn")


def flash_attn_func():
    """The first importable ``flash_attn_func`` of :data:`FLASH_MODULES`; ImportError naming the
    optional dependency when none is installed."""
    import importlib

    errors = []
    for name in FLASH_MODULES:
        try:
            return importlib.import_module(name).flash_attn_func
        except (ImportError, AttributeError) as e:
            errors.append(f"{name}: {e}")
    raise ImportError("backend='flash' needs flash-attn (pip install \"reward_forcing[flash]\"): " + "; ".join(errors))


def _attention_flash(
    q,
    k,
    v,
    k_cache,
    v_cache,
    state,
    frame_tokens,
    sink_frames,
    window_frames,
    scale,
    rope_freqs,
    rope_spatial,
    *,
    frames_appended=None,
):
    """flash-attn on the dense operands of the SDPA path. Its KV-cache entry point
    (``flash_attn_with_kvcache``) rotates keys at their slot index and cannot express 3-D RoPE
    on a ring with EMA eviction, so the cache's own staging rotates and flash-attn sees one
    plain non-causal attention over ``[sink | ring]``."""
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"backend='flash' needs a float16/bfloat16 cache, got {q.dtype}")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise RuntimeError("backend='flash' is inference only (no autograd); use 'kernel' or 'sdpa'")
    func = flash_attn_func()
    qr, keys, values = _dense_operands(
        q,
        k,
        v,
        k_cache,
        v_cache,
        state,
        frame_tokens,
        sink_frames,
        window_frames,
        rope_freqs,
        rope_spatial,
        frames_appended,
    )
    out = func(qr.contiguous(), keys, values, softmax_scale=scale, causal=False)
    return out[0] if isinstance(out, tuple) else out  # FA4 (and some FA3) return (out, lse)


# ----------------------------------------------------------------------------- op registration
def _no_meta_mix(cache, *tensors) -> None:
    """The fake (meta) kernels also receive real calls in which some tensor lives on the meta
    device (the dispatcher picks the meta kernel): refuse them instead of doing nothing."""
    if cache.device.type != "meta" and any(t is not None and t.device.type == "meta" for t in tensors):
        raise ValueError(
            "a tensor on the meta device (no data) was passed with a cache on "
            f"{cache.device}; rope tables and chunks must be on the cache's device"
        )


if HAS_CPP:

    @torch.library.register_fake("reward_forcing::sink_window_attention")
    def _(q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames, window_frames, scale, rope_freqs, rope_spatial):
        _no_meta_mix(k_cache, q, k, v, v_cache, state, rope_freqs, rope_spatial)
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("reward_forcing::stage_chunk")
    def _(q, k, v, k_cache, v_cache, state, frame_tokens, sink_frames, window_frames, rope_freqs, rope_spatial):
        _no_meta_mix(k_cache, q, k, v, v_cache, state, rope_freqs, rope_spatial)
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("reward_forcing::ring_append")
    def _(
        k_cache,
        v_cache,
        sink_k,
        sink_v,
        state,
        k,
        v,
        frame_tokens,
        sink_frames,
        window_frames,
        alpha,
        rope_freqs,
        rope_spatial,
    ):
        _no_meta_mix(k_cache, v_cache, sink_k, sink_v, state, k, v, rope_freqs, rope_spatial)
        return None

    def _attention_setup_context(ctx, inputs, output):
        q, k, v, k_cache, v_cache, state, t, s, w, scale, freqs, spatial = inputs
        # Copies, so that later in-place appends cannot corrupt what backward reads.
        ctx.context = (k_cache.clone(), v_cache.clone(), state.clone())
        ctx.sizes, ctx.scale, ctx.rope = (t, s, w), scale, (freqs, spatial)
        ctx.save_for_backward(q, k, v)

    def _attention_backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
            out = attention_on_buffer(qg, kg, vg, *ctx.context, *ctx.sizes, ctx.scale, *ctx.rope)
            grads = torch.autograd.grad(out, (qg, kg, vg), grad_out)
        return (*grads, None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd(
        "reward_forcing::sink_window_attention", _attention_backward, setup_context=_attention_setup_context
    )


def attention_on_buffer(
    q,
    k,
    v,
    k_cache,
    v_cache,
    state,
    frame_tokens,
    sink_frames,
    window_frames,
    scale,
    rope_freqs=None,
    rope_spatial=None,
):
    """Differentiable math form of the op: the whole buffer with a device-computed mask of the
    visible tokens (no host synchronisation); used for the op's backward."""
    t = frame_tokens
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    c = q.shape[1] // t
    qr, kr = q.to(acc), k.to(acc)
    if rope_freqs is not None:
        pos = state.reshape(1) + torch.arange(c, device=state.device)
        cos, sin = rope_cos_sin(rope_freqs, rope_spatial, pos, acc)
        qr, kr = rope_rotate(q, cos, sin), rope_rotate(k, cos, sin)
    ring = k_cache.shape[1] // t - sink_frames
    mask = reference.context_mask(state, t, sink_frames, window_frames, ring)
    mask = torch.cat([mask, torch.ones(c * t, dtype=torch.bool, device=mask.device)])
    keys = torch.cat([k_cache.to(acc), kr], 1)
    values = torch.cat([v_cache.to(acc), v.to(acc)], 1)
    return reference.attention(qr, keys, values, scale, mask).to(q.dtype)
