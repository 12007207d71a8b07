"""Faster ``forward_chunk`` callables for :class:`~reward_forcing.pipelines.StreamingPipeline`
(docs/design.md §3 "CUDA graphs", §7): drop-in replacements with the signature of
:meth:`CausalWanModel.forward_chunk <reward_forcing.models.causal_wan.CausalWanModel.forward_chunk>`,
``(x, t, context, cache, update_cache=False) -> velocity``.

* :class:`CUDAGraphForwardChunk` captures one CUDA graph per ``(t, update_cache)`` (and chunk
  shape) once the cache is in its steady state, then replays it for every later chunk: the
  host-side work of a forward (Python, kernel launches: thousands per forward at 30 blocks) is
  gone. It runs eager wherever a graph cannot hold (first chunks, re-cache pieces, CPU tensors).
* :class:`CompiledForwardChunk` runs every transformer block through ``torch.compile`` with the
  cache attention kept out of the compiled code, so the stream's host counters never cause a
  recompile.
* :func:`make_forward_chunk` picks one of them by name (the pipeline's ``accelerate`` option):
  ``"none"``, ``"cuda-graphs"``, ``"compile"`` or ``"compile+cuda-graphs"`` (graphs captured
  over the compiled blocks).

Why graphs only in the steady state: the cache keeps its counters on the device (``state``)
and the ops read positions and slots from there, but it also keeps a host mirror
(``frames_appended``) from which the SDPA path picks its *shapes*: the gathered context of the
first chunks grows with the stream; from ``sink_frames + window_frames`` frames on, every chunk
of ``chunk_frames`` frames is one dense attention over the whole fixed buffer, whatever the
counter's value. So a graph captured then is valid for every later chunk of the stream.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._extension import HAS_CUDA_KERNELS
from ..cache import StreamingKVCache
from ..models.causal_wan import CausalWanModel, TextKV

ACCELERATE_MODES = ("none", "cuda-graphs", "compile", "compile+cuda-graphs")


# ----------------------------------------------------------------------------- CUDA graphs
class CUDAGraphBackend:
    """How :class:`CUDAGraphForwardChunk` warms up, captures and replays: real CUDA graphs.
    All captures share one memory pool (the graphs never run concurrently, and every replay's
    output is copied out before the next replay), and run on one side stream, as torch's
    CUDA-graph notes require for the warm-up. Another object with the same three methods can
    stand in for it (the tests emulate graphs on a CPU with one)."""

    def __init__(self):
        self.stream = None
        self.pool = None

    def usable(self, x: torch.Tensor, cache: StreamingKVCache) -> bool:
        return x.is_cuda and cache.device.type == "cuda"

    def warmup(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Runs ``fn`` eagerly on the side stream (its result is real) and joins the streams."""
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = fn()
        current.wait_stream(self.stream)
        out.record_stream(current)  # allocated on the side stream, used and freed on this one
        return out

    def capture(self, fn: Callable[[], torch.Tensor]):
        """Captures ``fn`` (nothing runs); returns ``(replay, static_output)``."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (e.g. the server's other streams) may use the GPU meanwhile
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            out = fn()
        return graph.replay, out


@dataclass
class _Graph:
    x: torch.Tensor  # static input the graph reads
    out: torch.Tensor  # static output the graph writes
    replay: Callable[[], None]


class CUDAGraphForwardChunk:
    """``forward_chunk`` with CUDA graphs, bound to one ``model`` and one ``cache`` (buffers a
    graph captured must stay where they are: :meth:`StreamingKVCache.reset` and the pipeline's
    ``load_state_dict`` work in place, so they keep the graphs valid).

    A call runs eagerly (``forward``, the model's ``forward_chunk`` by default) unless all hold:
    CUDA tensors, ``cache`` is the bound cache, no autograd, ``t`` a Python number,
    ``context`` a :class:`TextKV`, a chunk of the cache's ``chunk_frames`` frames, and the cache
    in the steady state (``frames_appended >= sink_frames + window_frames``). Then the first call
    for a ``(t, update_cache, x shape, dtype, device)`` runs eagerly on a side stream (the warm-up; its
    result is the call's result) and captures a graph for that key; every later call copies
    ``x`` (and the prompt's cross-attention K/V, when another :class:`TextKV` than the last one
    is passed — a prompt switch copies, it does not recapture) into the graph's static inputs,
    replays it and returns a copy of its static output. A replayed ``update_cache=True`` graph
    appends on the device; the call then advances the cache's host mirror ``frames_appended`` as
    the eager append does.

    Graphs need the CUDA kernels (``stage_chunk``, ``ring_append``: the Python reference ops
    read the counter on the host); without them, or with ``cache.backend == "reference"``, it
    runs eager and warns once; so does it (for good) when a capture fails (``disabled`` says
    why). ``captures``, ``replays``, ``eager_calls`` count what happened; :meth:`clear` drops the
    graphs (and their memory).
    """

    def __init__(
        self, model: CausalWanModel, cache: StreamingKVCache, *, forward: Callable | None = None, graph_backend=None
    ):
        self.model, self.cache = model, cache
        self.forward = forward if forward is not None else model.forward_chunk
        self.backend = graph_backend if graph_backend is not None else CUDAGraphBackend()
        self.graphs: dict[tuple, _Graph] = {}
        self.captures = self.replays = self.eager_calls = 0
        self._text: TextKV | None = None  # the static prompt K/V every graph reads
        self._text_source: TextKV | None = None  # the TextKV last copied into it
        self._warned = False
        self.disabled: str | None = None  # why graphs were given up (a capture failed)

    def __call__(self, x, t, context, cache, update_cache: bool = False):
        key = self._key(x, t, context, cache, update_cache)
        if key is None:
            self.eager_calls += 1
            return self.forward(x, t, context, cache, update_cache=update_cache)
        graph = self.graphs.get(key)
        if graph is None:
            return self._capture(key, x, t, context, update_cache)
        self._load_text(context)
        graph.x.copy_(x)
        graph.replay()
        if update_cache:  # the graph appended on the device
            self.cache.advance(x.shape[2] // self.model.config.patch_size[0])
        self.replays += 1
        return graph.out.clone()

    def clear(self) -> None:
        """Drops every graph and static buffer; the next steady-state calls capture again."""
        self.graphs.clear()
        self._text = self._text_source = None
        self.disabled = None

    # ------------------------------------------------------------------ internals
    def _graphable(self, cache) -> bool:
        if cache.backend == "reference" or not HAS_CUDA_KERNELS:
            if not self._warned:
                self._warned = True
                why = (
                    "the cache backend is 'reference'"
                    if cache.backend == "reference"
                    else "reward_forcing was built without its CUDA kernels"
                )
                warnings.warn(
                    f"CUDA graphs disabled: {why} (its ops read the stream's counter on the host); running eager",
                    stacklevel=3,
                )
            return False
        return True

    def _key(self, x, t, context, cache, update_cache):
        c = self.cache
        if self.disabled or cache is not c or torch.is_grad_enabled() or not isinstance(context, TextKV):
            return None
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            return None
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or not self.backend.usable(x, c):
            return None
        if x.shape[2] != c.chunk_frames * self.model.config.patch_size[0]:
            return None
        if not c.steady:
            return None
        if context is not self._text_source and self._text is not None and not _same_layout(self._text, context):
            return None
        if isinstance(self.backend, CUDAGraphBackend) and not self._graphable(c):
            return None
        return float(t), bool(update_cache), tuple(x.shape), x.dtype, x.device

    def _load_text(self, context: TextKV) -> None:
        if context is self._text_source:
            return
        if self._text is None:  # static buffers a captured graph reads (a layout never: it applies at frame 0)
            pooled = None if context.pooled is None else context.pooled.clone()
            self._text = TextKV([(k.clone(), v.clone()) for k, v in context.kv], pooled)
        else:
            for (sk, sv), (k, v) in zip(self._text.kv, context.kv):
                sk.copy_(k)
                sv.copy_(v)
            if self._text.pooled is not None and context.pooled is not None:  # _same_layout: both or neither
                self._text.pooled.copy_(context.pooled)
        self._text_source = context

    def _capture(self, key, x, t, context, update_cache):
        cache, backend = self.cache, self.backend
        self._load_text(context)
        static_x = x.clone()
        static_t = torch.as_tensor(t, device=x.device)  # what forward_chunk makes of t, made now:
        # a host-to-device copy may not happen inside a capture

        def run():
            return self.forward(static_x, static_t, self._text, cache, update_cache=update_cache)

        out = backend.warmup(run)  # this call's result (and its cache update, if any)
        counters = cache.counters()
        try:
            replay, static_out = backend.capture(run)
        except Exception as e:  # nothing ran: the warm-up's result stands; go on eagerly
            self.disabled = f"{type(e).__name__}: {e}"
            warnings.warn(f"CUDA graph capture failed, running eager from now on: {self.disabled}", stacklevel=3)
            return out
        finally:  # the capture ran the Python code (append's host increment) but no kernel
            cache.restore_counters(counters)
        self.graphs[key] = _Graph(static_x, static_out, replay)
        self.captures += 1
        return out


def _same_layout(a: TextKV, b: TextKV) -> bool:
    if len(a.kv) != len(b.kv) or (a.pooled is None) != (b.pooled is None):
        return False
    pairs = [(x, y) for pa, pb in zip(a.kv, b.kv) for x, y in zip(pa, pb)]
    if a.pooled is not None and b.pooled is not None:
        pairs.append((a.pooled, b.pooled))
    return all(x.shape == y.shape and x.dtype == y.dtype and x.device == y.device for x, y in pairs)


# ----------------------------------------------------------------------------- torch.compile
class _LayerByLayer:
    """The cache attention of whichever block is running: one object for all blocks, so that
    the compiled blocks share one compiled graph (no guard on a per-layer object). It steps
    through the cache's layers in order; ``torch.compiler.disable`` keeps it (the ops, and the
    host counter the SDPA path branches on) out of the compiled code: a graph break."""

    def start(self, cache: StreamingKVCache, update_cache: bool) -> None:
        self.cache, self.update_cache, self.index = cache, update_cache, 0

    @torch.compiler.disable
    def __call__(self, q, k, v):
        layer = self.cache.layer(self.index)
        self.index += 1
        return layer.attend(q, k, v, append=self.update_cache)


class CompiledForwardChunk:
    """``forward_chunk`` with every transformer block compiled by ``torch.compile`` (``mode``,
    ``backend``, ``dynamic``, ``options`` are passed on); the cache attention runs eagerly
    between the compiled parts of a block (pre-attention: norms, modulation, q/k/v projections;
    post: output projection, cross-attention, FFN). The patch embedding, time embedding and
    head stay eager (a small share of the work).

    Bounded compilation: the compiled code never sees the cache or its host counter
    ``frames_appended`` (an int that dynamo would guard on, recompiling every chunk), and all
    blocks share one compiled graph (same code, same shapes: parameters are inputs, not
    constants), so a stream compiles once (plus once more, dynamic, if the chunk's token count
    changes) however many chunks and blocks it has. The model itself is not modified (its
    ``forward`` and ``forward_chunk`` stay eager)."""

    def __init__(
        self,
        model: CausalWanModel,
        *,
        mode: str | None = None,
        backend: str = "inductor",
        dynamic: bool | None = None,
        options: dict | None = None,
    ):
        self.model = model
        kwargs: dict[str, Any] = dict(backend=backend, dynamic=dynamic)
        if mode is not None:
            kwargs["mode"] = mode
        if options is not None:
            kwargs["options"] = options
        self.blocks = [torch.compile(block, **kwargs) for block in model.blocks]
        self._attend = _LayerByLayer()

    def __call__(self, x, t, context, cache: StreamingKVCache, update_cache: bool = False):
        self.model.check_cache(x, cache)
        self._attend.start(cache, update_cache)
        return self.model.forward_with(
            x, t, context, [self._attend] * len(self.blocks), at_start=cache.frames == 0, blocks=self.blocks
        )


# ----------------------------------------------------------------------------- by name
def make_forward_chunk(
    model: CausalWanModel,
    cache: StreamingKVCache,
    accelerate: str = "none",
    compiled: CompiledForwardChunk | None = None,
    **compile_kwargs,
) -> Callable:
    """The ``forward_chunk`` for an ``accelerate`` mode (:data:`ACCELERATE_MODES`): the model's
    own (``"none"``), :class:`CUDAGraphForwardChunk`, :class:`CompiledForwardChunk`, or graphs
    captured over the compiled blocks (``"compile+cuda-graphs"``). The compiled modes use
    ``compiled`` when given (one compilation shared by several caches), else a new
    :class:`CompiledForwardChunk` built with ``compile_kwargs``."""
    if accelerate not in ACCELERATE_MODES:
        raise ValueError(f"accelerate must be one of {ACCELERATE_MODES}, got {accelerate!r}")
    if accelerate == "none":
        return model.forward_chunk
    if accelerate == "cuda-graphs":
        return CUDAGraphForwardChunk(model, cache)
    compiled = compiled or CompiledForwardChunk(model, **compile_kwargs)
    if accelerate == "compile":
        return compiled
    return CUDAGraphForwardChunk(model, cache, forward=compiled)


__all__ = [
    "ACCELERATE_MODES",
    "CUDAGraphBackend",
    "CUDAGraphForwardChunk",
    "CompiledForwardChunk",
    "make_forward_chunk",
]
