"""The browser demo: a FastAPI app serving one page and a WebSocket that streams generated frames.

WebSocket protocol (``/ws``; one stream per connection; JSON text messages, JPEG binary frames):

client -> server
    ``{"type": "start", "prompt": str, "seed": int, "sink_frames": int, "window_frames": int,
    "alpha": float}`` (first message; all but ``prompt`` optional),
    ``{"type": "prompt", "prompt": str}`` (switch from the next chunk on), ``{"type": "stop"}``.
server -> client
    ``started`` (size, fps, recording id), binary JPEG frames, ``stats`` (twice a second: frames
    sent, dropped), ``prompt_switched``, ``warning`` (a prompt, at the start or a switch, has words
    the model was not trained on: ``message`` names them), ``error`` (invalid input: the socket
    stays open; or a failed stream), ``busy`` (all stream slots taken: the socket closes with code 1013),
    ``stopped`` (frames, dropped, ``recording``: the download URL or null), then the close.

Safety: inputs are validated with clear messages; every request must name an allowed host in
its ``Host`` header (loopback names by default: a DNS-rebinding page that resolves its own name
to 127.0.0.1 gets HTTP 400) and WebSocket handshakes from another origin are refused (a web page
elsewhere cannot drive the local server); recordings live in a server-chosen folder under random
ids, and downloads accept only such ids. A client that vanishes at any point (during the start,
mid-frame, without a close) gives its stream slot back within one chunk's compute.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.websockets import WebSocketDisconnected
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from .session import StreamSession, remove_old

STATIC = Path(__file__).parent / "static"
MAX_PROMPT_CHARS = 500
MAX_MESSAGE_CHARS = 4096
LIMITS: dict[str, list[Any]] = {
    "prompt_chars": [1, MAX_PROMPT_CHARS],
    "seed": [0, 2**32 - 1],
    "sink_frames": [0, 12],
    "window_frames": [1, 24],
    "alpha": [0.0, 1.0],
}
DEFAULTS: dict[str, Any] = {"seed": 0, "sink_frames": 3, "window_frames": 3, "alpha": 0.999}
_RECORDING_ID = re.compile(r"[0-9a-f]{32}")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_patterns(hosts) -> list[str]:
    """``Host`` header names for TrustedHostMiddleware (IPv6 literals in brackets, as sent)."""
    return [f"[{h}]" if ":" in h and not h.startswith("[") else h.lower() for h in hosts]


def _prompt_field():
    return Field(min_length=1, max_length=MAX_PROMPT_CHARS)


def _clean(prompt: str) -> str:
    from ..models.text_encoder import clean_prompt

    try:
        return clean_prompt(prompt)
    except ValueError:
        raise ValueError("the prompt is empty") from None


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["start"]
    prompt: str = _prompt_field()
    seed: StrictInt = Field(DEFAULTS["seed"], ge=LIMITS["seed"][0], le=LIMITS["seed"][1])
    sink_frames: StrictInt = Field(DEFAULTS["sink_frames"], ge=LIMITS["sink_frames"][0], le=LIMITS["sink_frames"][1])
    window_frames: StrictInt = Field(
        DEFAULTS["window_frames"], ge=LIMITS["window_frames"][0], le=LIMITS["window_frames"][1]
    )
    alpha: float = Field(DEFAULTS["alpha"], ge=0.0, le=1.0, allow_inf_nan=False)

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_number(cls, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        try:
            return float(value)
        except OverflowError:  # a 400-digit int: pydantic would not catch it
            raise ValueError("must be a number in [0, 1]") from None

    @field_validator("prompt")
    @classmethod
    def _prompt_clean(cls, value: str) -> str:
        return _clean(value)


class PromptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["prompt"]
    prompt: str = _prompt_field()

    @field_validator("prompt")
    @classmethod
    def _prompt_clean(cls, value: str) -> str:
        return _clean(value)


def _message(error: ValidationError) -> str:
    """Pydantic's errors as one line: ``seed: Input should be ...; alpha: ...``."""
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "message"
        text = e["msg"].removeprefix("Value error, ")
        extra = e["type"] == "extra_forbidden"
        parts.append(f"unknown field {where!r}" if extra else f"{where}: {text}")
    return "; ".join(parts)


def _parse(text: str) -> dict:
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"message longer than {MAX_MESSAGE_CHARS} characters")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("message is not valid JSON") from None
    except RecursionError:
        raise ValueError("message is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError('message must be a JSON object with a "type"')
    return data


class _Slots:
    """The stream cap. Taken on the event loop, given back by the worker thread as it ends, so
    the count is the number of generating threads even when a handler is cancelled."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1


def sibling_factory(base) -> Callable[..., Any]:
    """A ``pipeline_factory`` making pipelines that share ``base``'s model, VAE and text encoder
    (loaded once) with their own cache and decoder state; sink/window/alpha per stream
    (:meth:`~reward_forcing.pipelines.StreamingPipeline.sibling`)."""
    return base.sibling


def create_app(
    pipeline_factory: Callable[..., Any],
    *,
    max_streams: int = 2,
    queue_size: int = 2,
    recordings_dir: str | Path | None = None,
    max_recordings: int = 20,
    pace: bool = True,
    start_timeout: float = 60.0,
    stats_interval: float = 0.5,
    note: str | None = None,
    allowed_hosts=LOOPBACK_HOSTS,
    max_sockets: int | None = None,
) -> FastAPI:
    """``pipeline_factory(sink_frames=, window_frames=, alpha=)`` returns a fresh
    :class:`StreamingPipeline` for one stream (it is called in a worker thread). At most
    ``max_streams`` streams run at once; ``queue_size`` chunks of frames wait per client before
    the oldest frames are dropped; the ``max_recordings`` newest mp4s are kept in
    ``recordings_dir`` (default: a new temporary folder). ``pace``: send frames at the video's
    frame rate. ``note``: a line the page shows (e.g. that the model is random).
    ``allowed_hosts``: the names a request's ``Host`` header may give (HTTP 400 otherwise).
    ``max_sockets`` (default ``8 * max_streams``): open WebSockets, idle ones included; more are
    closed at once with code 1013, so idle sockets cannot starve the page and ``/health``."""
    if max_streams < 1:
        raise ValueError(f"max_streams must be >= 1, got {max_streams}")
    if queue_size not in (1, 2):
        raise ValueError(f"queue_size must be 1 or 2 chunks, got {queue_size}")
    rec_dir = (
        Path(recordings_dir)
        if recordings_dir is not None
        else Path(tempfile.mkdtemp(prefix="reward-forcing-recordings-"))
    )
    rec_dir.mkdir(parents=True, exist_ok=True)

    app = FastAPI(title="reward_forcing streaming demo", docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(allowed_hosts), www_redirect=False)
    slots = app.state.slots = _Slots(max_streams)
    sockets = _Slots(max_sockets if max_sockets is not None else 8 * max_streams)
    app.state.recordings_dir = rec_dir
    sessions: set[StreamSession] = set()
    app.state.sessions = sessions
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "active_streams": slots.active, "max_streams": max_streams}

    @app.get("/api/config")
    async def config():
        return {"limits": LIMITS, "defaults": DEFAULTS, "note": note}

    @app.get("/recordings/{rec_id}.mp4")
    async def recording(rec_id: str):
        if not _RECORDING_ID.fullmatch(rec_id) or not (path := rec_dir / f"{rec_id}.mp4").is_file():
            raise HTTPException(404, "no such recording")
        return FileResponse(path, media_type="video/mp4", filename=f"reward-forcing-{rec_id[:8]}.mp4")

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket):
        origin = ws.headers.get("origin")
        if origin and urlsplit(origin).netloc != ws.headers.get("host"):
            await ws.close(code=1008)  # refused handshake: HTTP 403
            return
        counted = sockets.acquire()
        try:
            if counted:
                await _connection(ws)
            else:  # too many open sockets: try again later
                await ws.accept()
                await ws.close(code=1013)
        except (WebSocketDisconnect, WebSocketDisconnected):
            pass  # the client went away; _stream has stopped its worker
        finally:
            if counted:
                sockets.release()

    async def _connection(ws: WebSocket):
        await ws.accept()
        lock = asyncio.Lock()

        async def send(message: dict):
            async with lock:
                await ws.send_json(message)

        request = await _wait_start(ws, send, start_timeout)
        if request is None:
            return
        if not slots.acquire():
            await send(
                {
                    "type": "busy",
                    "message": f"the server is busy: all {max_streams} stream slots are in use, try again later",
                }
            )
            await ws.close(code=1013)
            return
        await _stream(ws, send, lock, request)

    async def _stream(ws: WebSocket, send, lock: asyncio.Lock, request: StartRequest):
        """Runs one stream; owns the slot taken for it (the worker gives it back)."""
        try:
            pipe = await asyncio.to_thread(
                pipeline_factory,
                sink_frames=request.sink_frames,
                window_frames=request.window_frames,
                alpha=request.alpha,
            )
            rec_id = uuid.uuid4().hex
            session = StreamSession(
                pipe,
                request.prompt,
                request.seed,
                loop=asyncio.get_running_loop(),
                queue_size=queue_size,
                pace=pace,
                recording=rec_dir / f"{rec_id}.mp4",
                on_finish=slots.release,
            )
            session.start()
        except BaseException as e:
            slots.release()
            if not isinstance(e, Exception):
                raise
            await send({"type": "error", "message": f"could not start the stream: {e}"})
            await ws.close(code=1011)
            return
        app.state.sessions.add(session)
        sender = receiver = None
        try:  # from here on, whatever happens (the client gone mid-send included) stops the worker
            await send(
                {
                    "type": "started",
                    "width": pipe.width,
                    "height": pipe.height,
                    "fps": pipe.fps,
                    "recording_id": rec_id,
                    "queue_size": queue_size,
                    "prompt": request.prompt,
                }
            )
            if warning := pipe.vocabulary_warning(request.prompt):
                await send({"type": "warning", "message": warning})
            sender = asyncio.create_task(_send_frames(ws, send, lock, session, stats_interval))
            receiver = asyncio.create_task(_receive_controls(ws, send, session, pipe.vocabulary_warning))
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            session.stop()
            if receiver.done():
                how = receiver.result() if receiver.exception() is None else "disconnect"
            else:  # the sender ended: the stream failed, or the client went away
                receiver.cancel()
                how = "disconnect" if sender.exception() is not None else "ended"
            sender.cancel()  # on stop, frames still buffered are not sent: the video stops now
            await asyncio.gather(sender, return_exceptions=True)  # not mid-send any more
            await session.wait()
            remove_old(rec_dir, max_recordings)
            if how == "disconnect":
                return
            if session.error:
                await send({"type": "error", "message": f"the stream failed: {session.error}"})
            await send(
                {
                    "type": "stopped",
                    "frames": session.taken,
                    "generated": session.generated,
                    "dropped": session.dropped,
                    "recording": f"/recordings/{rec_id}.mp4" if session.recording else None,
                }
            )
            await ws.close(code=1000)
        finally:  # also when this handler is cancelled (server shutdown)
            session.stop()
            app.state.sessions.discard(session)
            for task in (sender, receiver):
                if task is not None:
                    task.cancel()
            await session.wait()

    return app


async def _wait_start(ws: WebSocket, send, timeout: float) -> StartRequest | None:
    """The first valid ``start`` message; errors for invalid ones; None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await send({"type": "error", "message": f"no start message within {timeout:g} s"})
            await ws.close(code=1008)
            return None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        try:
            if message.get("text") is None:
                raise ValueError("expected a JSON text message")
            data = _parse(message["text"])
            if data["type"] != "start":
                raise ValueError(f'expected a "start" message first, got {data["type"]!r}')
            return StartRequest.model_validate(data)
        except ValidationError as e:
            await send({"type": "error", "message": f"invalid start: {_message(e)}"})
        except ValueError as e:
            await send({"type": "error", "message": str(e)})


async def _receive_controls(
    ws: WebSocket, send, session: StreamSession, vocabulary_warning: Callable[[str], str | None]
) -> str:
    """Applies prompt switches (warning about words the model does not know); returns ``"stop"``
    or ``"disconnect"``."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return "disconnect"
        try:
            if message.get("text") is None:
                raise ValueError("expected a JSON text message")
            data = _parse(message["text"])
            if data["type"] == "stop":
                return "stop"
            if data["type"] != "prompt":
                raise ValueError(f'unknown message type {data["type"]!r} while streaming (expected "prompt" or "stop")')
            prompt = PromptRequest.model_validate(data).prompt
            session.set_prompt(prompt)
            if warning := vocabulary_warning(prompt):
                await send({"type": "warning", "message": warning})
        except ValidationError as e:
            await send({"type": "error", "message": f"invalid prompt switch: {_message(e)}"})
        except ValueError as e:
            await send({"type": "error", "message": str(e)})


async def _send_frames(
    ws: WebSocket, send, lock: asyncio.Lock, session: StreamSession, stats_interval: float = 0.5
) -> None:
    """Frames from the session's buffer to the client, with stats and switch notices."""
    switched, last_stats = 0, time.monotonic()
    while (jpeg := await session.next_frame()) is not None:
        async with lock:
            await ws.send_bytes(jpeg)
        while switched < len(session.switches):
            await send({"type": "prompt_switched", "prompt": session.switches[switched]})
            switched += 1
        if time.monotonic() - last_stats >= stats_interval:
            last_stats = time.monotonic()
            await send(
                {"type": "stats", "frames": session.taken, "generated": session.generated, "dropped": session.dropped}
            )
