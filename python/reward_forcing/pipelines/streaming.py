"""Endless text-to-video streaming with the causal Wan model and the EMA-Sink cache (docs/design.md §2, §4).

Per chunk of ``chunk_frames`` latent frames: the few-step schedule (each step one
``forward_chunk`` against the cache as it stands, fresh noise between steps), one more forward of
the clean chunk at t = 0 that appends its keys/values to the cache, then the causal VAE decode of
the chunk, so its frames can be shown at once. Everything a stream holds has a fixed size: the
cache, the last ``sink + window`` clean latent frames (for the KV re-cache) and the VAE's temporal
cache.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..cache import CacheConfig
from ..models.causal_wan import CausalWanModel
from ..models.text_encoder import HashedTextEncoder, SharedTextEncoder, clean_prompt
from ..models.pixel_codec import streaming_decoder
from ..models.wan_config import WAN_TINY
from ..scheduler import FewStepFlowSchedule
from ..world import VOCABULARY, LayoutTextEncoder, unknown_words

_STATE_VERSION = 1


class UnknownWordsWarning(UserWarning):
    """A prompt has words outside the vocabulary of a model trained on a closed set of prompts."""


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """VAE output ``[1, 3, F, H, W]`` in [-1, 1] -> ``uint8 [F, H, W, 3]`` (numpy, CPU)."""
    x = ((video[0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


class StreamingPipeline:
    """Streams video for one prompt at a time (batch 1).

    ``model`` a :class:`CausalWanModel`; ``vae`` a diffusers ``AutoencoderKLWan`` or a
    :class:`~reward_forcing.models.pixel_codec.PixelCodec`; ``text_encoder``
    a callable ``prompts -> [B, L, text_dim]`` states, zero after the real tokens (see
    :mod:`reward_forcing.models.text_encoder`; it bundles its tokenizer). ``height x width`` are
    pixels (multiples of 16 for Wan). ``cache_config`` (a :class:`~reward_forcing.cache.CacheConfig`)
    shapes the EMA-Sink cache (docs/design.md §2); its fields can also be given one by one
    (``sink_frames=``, ``window_frames=``, ``chunk_frames=``, ``alpha=``, ``half_life=``,
    ``sink_dtype=``, ``cache_backend=``), applied on top of it. ``fps`` is the video
    frame rate, which turns seconds into frames. ``recache`` re-encodes the cache under a new
    prompt at a prompt switch; ``sink_recache`` then keeps the sink (``"keep"``) or rebuilds it
    from the kept clean latents (``"reinit"``). ``offload_text_encoder`` moves the text encoder to
    the CPU after each use. ``vocabulary`` (a set of lower-case words; :meth:`default` sets the
    world's): a prompt with other words raises an :class:`UnknownWordsWarning` naming them.

    Output: :meth:`stream` yields, chunk by chunk, ``uint8`` numpy arrays ``[frames, H, W, 3]``
    (RGB): ``1 + 4 (C - 1)`` frames for the first chunk, ``4 C`` for every later one (Wan's VAE).

    ``forward_chunk`` (the model's, by default) is the one entry point of every transformer call,
    with the signature of :meth:`CausalWanModel.forward_chunk`: replace it with a compiled or
    CUDA-graph-captured version to accelerate the loop. ``accelerate`` does that
    (:mod:`reward_forcing.pipelines.accelerate`): ``"none"`` (eager), ``"cuda-graphs"`` (one
    graph per denoising step and for the cache pass, captured at the first steady-state chunk
    and replayed; eager on a CPU), ``"compile"`` (``torch.compile`` of the transformer blocks)
    or ``"compile+cuda-graphs"``.

    ``overlap`` (default: on for CUDA) decodes chunk k while chunk k+1 is denoised
    (:mod:`reward_forcing.pipelines.overlap`): same frames, in order. The generator then runs one
    chunk ahead of the frames handed out, so a prompt switch lands a chunk later, and a stream
    left before its end cannot be resumed (its state is ahead of its frames).
    """

    def __init__(
        self,
        model: CausalWanModel,
        vae,
        text_encoder,
        *,
        height: int = 480,
        width: int = 832,
        cache_config: CacheConfig | None = None,
        schedule: FewStepFlowSchedule | None = None,
        fps: float = 16.0,
        recache: bool = False,
        sink_recache: str = "keep",
        offload_text_encoder: bool = False,
        accelerate: str = "none",
        overlap: bool | None = None,
        cache_backend: str | None = None,
        vocabulary: frozenset[str] | None = None,
        **geometry,
    ):
        from .accelerate import ACCELERATE_MODES, make_forward_chunk

        if accelerate not in ACCELERATE_MODES:
            raise ValueError(f"accelerate must be one of {ACCELERATE_MODES}, got {accelerate!r}")
        if sink_recache not in ("keep", "reinit"):
            raise ValueError(f"sink_recache must be 'keep' or 'reinit', got {sink_recache!r}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.model = model.eval()
        self.vae = vae
        self.decoder = streaming_decoder(vae)
        self.schedule = schedule or FewStepFlowSchedule()
        self.fps, self.recache, self.sink_recache = float(fps), recache, sink_recache
        self.vocabulary = vocabulary

        cfg, scale = model.config, self.decoder.spatial_scale
        pt, ph, pw = cfg.patch_size
        if pt != 1:
            raise ValueError(f"streaming needs a temporal patch size of 1, the model has {pt}")
        if height <= 0 or width <= 0 or height % (scale * ph) or width % (scale * pw):
            raise ValueError(
                f"height and width must be positive multiples of {scale * ph} x {scale * pw}, got {height} x {width}"
            )
        self.height, self.width = height, width
        self.device = model.device
        # the pipeline's text encoder, shared as it is by the server's sibling pipelines
        self.text_encoder = (
            text_encoder
            if isinstance(text_encoder, SharedTextEncoder)
            else SharedTextEncoder(text_encoder, self.device, "cpu" if offload_text_encoder else None)
        )
        self.cache = model.new_cache(
            1,
            height // scale // ph,
            width // scale // pw,
            CacheConfig.of(cache_config, backend=cache_backend, **geometry),
        )
        self.latent_shape = (1, cfg.in_dim, self.cache.chunk_frames, height // scale, width // scale)
        self.accelerate = accelerate
        self.overlap = self.device.type == "cuda" if overlap is None else bool(overlap)
        self.forward_chunk = make_forward_chunk(model, self.cache, accelerate)
        self.generator = torch.Generator(self.device)
        self._kept: torch.Tensor  # the last sink + window clean latent frames (set by _start)
        self._started = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls, checkpoint, text_encoder, vae, *, device=None, dtype: torch.dtype | None = None, **kwargs
    ) -> "StreamingPipeline":
        """Loads a transformer checkpoint (any format of docs/design.md §6), a UMT5 text encoder and a Wan
        VAE (diffusers/transformers folders or Wan's own release files; a TAEHV ``taew2_1`` file
        gives the light decoder instead), all local. Default
        device: CUDA when present; dtype: bf16 on CUDA (the VAE and text encoder too), float32 on
        the CPU."""
        from ..models.loading import load_causal_wan
        from ..models.text_encoder import UMT5TextEncoder
        from ..models.vae import load_vae

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = load_causal_wan(checkpoint, dtype=dtype, device=device)
        encoder = UMT5TextEncoder.from_pretrained(  # offloaded: it waits on the CPU for prompts
            text_encoder,
            text_len=model.config.text_len,
            dtype=dtype,
            device="cpu" if kwargs.get("offload_text_encoder") else device,
        )
        return cls(model, load_vae(vae, dtype=dtype, device=device), encoder, **kwargs)

    @classmethod
    def default(cls, *, device="cpu", path=None, **kwargs) -> "StreamingPipeline":
        """The embedded default model (:mod:`reward_forcing.models.default`: the world student,
        the packaged MiniLM text encoder, the pixel codec), with the streaming settings it was
        trained for unless ``kwargs`` override them. At 64x64 the 4.7M-parameter model streams
        60 s of video in ~17 s on one CPU thread (measured with random weights)."""
        from ..models import default as default_model
        from ..models.pixel_codec import PixelCodec
        from ..models.text_encoder import MiniLMTextEncoder

        model, settings = default_model.load(path or default_model.WEIGHTS, device=device)
        text: torch.nn.Module = MiniLMTextEncoder.from_pretrained(text_len=model.config.text_len, device=device)
        kwargs = default_model.pipeline_kwargs(settings) | {"vocabulary": VOCABULARY} | kwargs
        codec = PixelCodec()
        if model.config.layout:  # objects the prompt does not place start where they have room to move
            scale = codec.spatial_scale
            grid = model.config.token_grid(kwargs["height"] // scale, kwargs["width"] // scale)
            text = LayoutTextEncoder(text, *grid, place_unplaced=True, sketch_pixels=model.config.layout_sketch)
        return cls(model, codec, text, **kwargs)

    @classmethod
    def tiny_random(cls, *, device="cpu", seed: int = 0, **kwargs) -> "StreamingPipeline":
        """A RANDOM-weight pipeline (``WAN_TINY`` transformer, tiny Wan-layout VAE, hashed-word
        text encoder): it runs anywhere in seconds and shows noise-like video. For tests and
        demos without weights; warns that it is random."""
        from ..models.vae import tiny_random_wan_vae

        warnings.warn(
            "reward_forcing: using a tiny RANDOM model (no trained weights): the video will not follow the prompt",
            stacklevel=2,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CausalWanModel(WAN_TINY)
        text = HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len, seed=seed)
        kwargs.setdefault("height", 64)
        kwargs.setdefault("width", 112)
        return cls(model.to(device), tiny_random_wan_vae(seed, device=device), text.to(device), **kwargs)

    def sibling(self, **cache_fields) -> "StreamingPipeline":
        """A pipeline sharing this one's model, decoder weights and text encoder (loaded once) with
        its own cache, decoder state and stream (what the server makes per client); ``cache_fields``
        (e.g. ``sink_frames``, ``alpha``) replace fields of this pipeline's cache config."""
        return StreamingPipeline(
            self.model,
            self.vae,
            self.text_encoder,
            height=self.height,
            width=self.width,
            cache_config=CacheConfig.of(self.cache.config, **cache_fields),
            schedule=self.schedule,
            fps=self.fps,
            recache=self.recache,
            sink_recache=self.sink_recache,
            accelerate=self.accelerate,
            overlap=self.overlap,
            vocabulary=self.vocabulary,
        )

    # ------------------------------------------------------------------ timing
    @property
    def chunk_frames(self) -> int:
        return self.cache.chunk_frames

    def chunk_start_frame(self, chunk: int) -> int:
        """Index of the first video frame that chunk ``chunk`` decodes to."""
        return 0 if chunk == 0 else self.decoder.frames_for(chunk * self.chunk_frames, first=True)

    def chunk_at(self, seconds: float) -> int:
        """The first chunk whose frames all start at or after ``seconds`` (a bisection: a switch
        at 1e9 s costs a few dozen steps, not a billion)."""
        frame = math.ceil(seconds * self.fps - 1e-9)
        low, high = 0, 1  # chunk_start_frame(low) < frame <= chunk_start_frame(high), once found
        if self.chunk_start_frame(low) >= frame:
            return 0
        while self.chunk_start_frame(high) < frame:
            low, high = high, 2 * high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.chunk_start_frame(mid) < frame else (low, mid)
        return high

    # ------------------------------------------------------------------ streaming
    def stream(
        self,
        prompt: str | None,
        seconds: float | None = None,
        *,
        seed: int = 0,
        prompts: Sequence[tuple[float, str]] | None = None,
    ) -> Iterator[np.ndarray]:
        """Starts a new stream and returns its frames chunk by chunk (see the class doc); endless
        when ``seconds`` is None, else exactly ``round(seconds * fps)`` frames. ``prompts``:
        timed switches ``[(seconds, prompt), ...]``; each takes effect at the first chunk starting
        at or after its time (:meth:`chunk_at`); an entry at 0 may replace ``prompt``. Same
        seed and arguments, same frames. Arguments are checked at the call, not at iteration."""
        timed = sorted((_check_seconds(t, "switch time", zero_ok=True), clean_prompt(p)) for t, p in (prompts or ()))
        switches = [(self.chunk_at(t), p) for t, p in timed]
        while switches and switches[0][0] == 0:
            prompt = switches.pop(0)[1]
        if prompt is None:
            raise ValueError("no prompt: give one, or a switch at time 0")
        end = None if seconds is None else max(1, round(_check_seconds(seconds) * self.fps))
        self._start(clean_prompt(prompt), seed, end, switches)
        return self.resume()

    def generate(
        self, prompt: str | None, seconds: float, *, seed: int = 0, prompts: Sequence[tuple[float, str]] | None = None
    ) -> np.ndarray:
        """The whole clip: ``uint8 [round(seconds * fps), H, W, 3]``."""
        if seconds is None:
            raise ValueError("generate needs a finite number of seconds")
        return np.concatenate(list(self.stream(prompt, seconds, seed=seed, prompts=prompts)))

    def resume(self, before_chunk: Callable[[], bool | None] | None = None) -> Iterator[np.ndarray]:
        """Continues the current stream (e.g. after :meth:`load_state_dict`) where it stands.
        ``before_chunk()`` runs before each chunk is generated, in the thread that generates it
        (prompt switches, pacing); returning False ends the stream."""
        if not self._started:
            raise RuntimeError("no stream to resume: call stream() or load_state_dict() first")
        return self._chunks(before_chunk)

    def _more(self) -> bool:
        """Whether the stream needs another chunk (its frames start before ``end_frame``)."""
        return self.end_frame is None or self.chunk_start_frame(self.chunk_index) < self.end_frame

    def _chunks(self, before_chunk=None) -> Iterator[np.ndarray]:
        if not self.overlap:
            while self._more() and (before_chunk is None or before_chunk() is not False):
                yield self.next_chunk()
            return
        from .overlap import overlapped

        done = False
        try:
            yield from overlapped(
                self.next_latents, self.decode_latents, more=self._more, before=before_chunk, device=self.device
            )
            done = True
        finally:
            if not done:  # the denoiser may have run ahead of the frames handed out
                self._started = False

    def set_prompt(self, prompt: str, recache: bool | None = None) -> None:
        """Switches the prompt from the next chunk on (interactive use); ``recache`` overrides
        the pipeline's setting."""
        if not self._started:
            raise RuntimeError("no stream: call stream() first")
        prompt = clean_prompt(prompt)
        self._switch(prompt, self._encode([prompt])[prompt], self.recache if recache is None else recache)

    def next_chunk(self) -> np.ndarray:
        """Generates, caches and decodes one chunk; returns its frames (trimmed at the end)."""
        return self.decode_latents(self.next_latents())

    @torch.no_grad()
    def next_latents(self) -> torch.Tensor:
        """Generates and caches one chunk: its clean latents ``[1, C, c, h, w]`` (float32), to be
        given to :meth:`decode_latents` in stream order (the overlapped loop decodes chunk k while
        this makes chunk k+1)."""
        if not self._started:
            raise RuntimeError("no stream: call stream() first")
        while self._switches and self._switches[0][0] <= self.chunk_index:
            _, prompt = self._switches.pop(0)
            self._switch(prompt, self._prompt_states[prompt], self.recache)
        x0 = self._denoise()
        self.forward_chunk(x0, 0.0, self._text, self.cache, update_cache=True)
        keep = self.cache.sink_frames + self.cache.window_frames
        kept = torch.cat([self._kept, x0], 2)
        self._kept = kept[:, :, kept.shape[2] - keep :]
        self.chunk_index += 1
        return x0

    @torch.no_grad()
    def decode_latents(self, x0: torch.Tensor) -> np.ndarray:
        """The frames of the next chunk's latents (the VAE's temporal cache advances; the last
        chunk is trimmed at ``end_frame``)."""
        frames = to_uint8_frames(self.decoder.decode(x0))
        if self.end_frame is not None:
            frames = frames[: self.end_frame - self.frames_emitted]
        self.frames_emitted += len(frames)
        return frames

    def _denoise(self) -> torch.Tensor:
        """The few-step schedule for one chunk: the clean latents ``x0_hat`` (float32)."""
        return self.schedule.denoise(
            self._noise(),
            lambda x, t: self.forward_chunk(x, t, self._text, self.cache, update_cache=False),
            lambda x0: self._noise(),
        )

    def _noise(self) -> torch.Tensor:
        return torch.randn(self.latent_shape, generator=self.generator, device=self.device)

    # ------------------------------------------------------------------ prompts
    def vocabulary_warning(self, prompt: str) -> str | None:
        """What :class:`UnknownWordsWarning` says about ``prompt`` (the words outside the model's
        vocabulary); None when it has none or the pipeline has no vocabulary."""
        unknown = unknown_words(prompt, self.vocabulary) if self.vocabulary is not None else []
        if not unknown:
            return None
        words = ", ".join(unknown)
        return f"the model was not trained on the word(s) {words} in {prompt!r}: they will be ignored or misread"

    def _encode(self, prompts) -> dict[str, torch.Tensor]:
        """Runs the text encoder once for the given (cleaned) prompts; warns about words outside the
        model's vocabulary (when it has one)."""
        prompts = list(dict.fromkeys(prompts))
        for prompt in prompts:
            if message := self.vocabulary_warning(prompt):
                warnings.warn(message, UnknownWordsWarning, stacklevel=3)
        states = self.text_encoder(prompts)
        limit = self.model.config.text_len + (self.cache.frame_tokens if self.model.config.layout else 0)
        if states.shape[1] > limit:
            raise ValueError(f"the text encoder gives {states.shape[1]} tokens, the model takes at most {limit}")
        return {p: states[i : i + 1] for i, p in enumerate(prompts)}

    @torch.no_grad()
    def _switch(self, prompt: str, states: torch.Tensor, recache: bool) -> None:
        self.prompt, self._text = prompt, self.model.encode_text(states)
        if recache:
            self._recache()

    def _recache(self) -> None:
        """KV re-cache (docs/design.md §2): re-encodes the kept clean latents under the current prompt.
        Before any frame left the window, the kept latents are the whole stream and the cache is
        rebuilt exactly. Afterwards the sink is an EMA history: ``"keep"`` puts it back and
        re-encodes the window frames after it; ``"reinit"`` rebuilds sink and window from the
        last ``sink + window`` frames. The cache's frame counters restart (RoPE only sees
        differences of positions), so the EMA slot order restarts at slot 0."""
        cache, frames, text = self.cache, self._kept, self._text
        s, w = cache.sink_frames, cache.window_frames
        if cache.frames == 0:
            return
        keep_sink = self.sink_recache == "keep" and cache.frames > s + w and s > 0
        if keep_sink:
            frames = frames[:, :, frames.shape[2] - w :]
        elif cache.frames > s + w:  # the kept frames do not start the stream: a layout is not theirs
            text = dataclasses.replace(text, layout=None)
        cache.reset(keep_sink=keep_sink)
        for piece in frames.split(cache.chunk_frames, 2):
            self.forward_chunk(piece, 0.0, text, cache, update_cache=True)

    # ------------------------------------------------------------------ state
    @torch.no_grad()
    def _start(self, prompt: str, seed: int, end_frame, switches) -> None:
        self._prompt_states = self._encode([prompt] + [p for _, p in switches])
        self._switches = [tuple(e) for e in switches]
        self.prompt, self._text = prompt, self.model.encode_text(self._prompt_states[prompt])
        self.seed, self.end_frame = int(seed), end_frame
        self.chunk_index = self.frames_emitted = 0
        self.generator.manual_seed(self.seed)
        self.cache.reset()
        self.decoder.reset()
        self._kept = torch.zeros(*self.latent_shape[:2], 0, *self.latent_shape[3:], device=self.device)
        self._started = True

    def _geometry(self) -> dict:
        c = self.cache
        return dict(
            height=self.height,
            width=self.width,
            sink_frames=c.sink_frames,
            window_frames=c.window_frames,
            chunk_frames=c.chunk_frames,
            alpha=c.alpha,
            fps=self.fps,
            steps=self.schedule.steps,
            shift=self.schedule.shift,
        )

    def state_dict(self) -> dict:
        """A copy of everything a stream needs to continue (take it between chunks): cache
        tensors and counters, kept latents, noise RNG, VAE decode cache, chunk/frame counters,
        prompts. Tensors stay on their device; ``torch.save`` it to resume in another process."""
        if not self._started:
            raise RuntimeError("no stream: call stream() first")
        c = self.cache
        return {
            "version": _STATE_VERSION,
            "geometry": self._geometry(),
            "cache": c.state_dict(),
            "kept_latents": self._kept.clone(),
            "generator": self.generator.get_state(),
            "decoder": self.decoder.state_dict(),
            "seed": self.seed,
            "chunk_index": self.chunk_index,
            "frames_emitted": self.frames_emitted,
            "end_frame": self.end_frame,
            "prompt": self.prompt,
            "switches": list(self._switches),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a stream saved by :meth:`state_dict` (same model, VAE and settings); prompts
        are encoded again. Then :meth:`resume` continues it."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown stream state version {state.get('version')!r}")
        if state["geometry"] != self._geometry():
            raise ValueError(f"the stream was saved with {state['geometry']}, this pipeline has {self._geometry()}")
        self.cache.check_state_dict(state["cache"])  # before anything is reset
        self._start(state["prompt"], state["seed"], state["end_frame"], state["switches"])
        self.cache.load_state_dict(state["cache"])
        self._kept = state["kept_latents"].to(self.device).clone()
        self.generator.set_state(state["generator"])
        self.decoder.load_state_dict(state["decoder"])
        self.chunk_index, self.frames_emitted = state["chunk_index"], state["frames_emitted"]


def _check_seconds(seconds, what: str = "seconds", zero_ok: bool = False) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {seconds!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{what} must be {'>= 0' if zero_ok else '> 0'} and finite, got {seconds!r}")
    return value
