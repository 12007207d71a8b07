"""One generation stream per WebSocket session, run in a worker thread.

Frames travel as one JPEG per WebSocket binary message. Why JPEG rather than WebP or fragmented
MP4: every browser decodes it natively (``createImageBitmap``/``<img>``) with no MediaSource
plumbing; each frame stands alone, so a frame can be dropped for a slow client without breaking
a codec's inter-frame references and the first frame shows as soon as it is encoded (an fMP4 or
H.264 stream would need keyframes and muxer buffering, which add latency); and JPEG encoding
(OpenCV, GIL released) costs well under a millisecond at demo sizes, far less than WebP.

Backpressure: the generator makes a chunk of frames at a time (12 for Wan's VAE), so the buffer
between the worker and the client holds ``queue_size`` (1-2) CHUNKS of encoded frames; when a
new chunk does not fit, the oldest frames are DROPPED and counted. Generation therefore never
waits for the network and a session's memory does not grow with a slow client. The asyncio side
hands the frames of a chunk out evenly (at the video's frame rate, or spread over the time the
generator needs per chunk when it is slower than real time), so a client that keeps up loses
nothing even though frames are produced in bursts. The cancel flag is checked before every
chunk and every frame, so a stop or disconnect ends the stream within one chunk's compute.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..video_io import write_mp4


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """``uint8 [H, W, 3]`` RGB -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class StreamSession:
    """Streams ``pipeline`` (a fresh :class:`StreamingPipeline`, owned by this session) from
    :meth:`start` until :meth:`stop`. The asyncio side reads frames with :meth:`next_frame`.

    ``pace``: real-time pacing: the worker stays at most half a chunk ahead of the video clock
    (a fast generator waits instead of flooding) and :meth:`next_frame` spaces the frames out.
    ``recording``: an mp4 path written atomically (``video_io.write_mp4``) with every generated
    frame, including the ones a slow client missed, so the download is the full video.
    ``on_finish`` is called on the worker thread as it ends.
    """

    def __init__(
        self,
        pipeline,
        prompt: str,
        seed: int,
        *,
        loop: asyncio.AbstractEventLoop,
        queue_size: int = 2,
        pace: bool = True,
        recording: Path | None = None,
        jpeg_quality: int = 85,
        on_finish: Callable[[], None] | None = None,
    ):
        if queue_size not in (1, 2):
            raise ValueError(f"queue_size must be 1 or 2 chunks, got {queue_size}")
        self.pipeline, self.prompt, self.seed = pipeline, prompt, seed
        self.pace, self.recording, self.jpeg_quality = pace, recording, jpeg_quality
        self.chunk_size = pipeline.decoder.frames_for(pipeline.chunk_frames, first=False)
        self.capacity = queue_size * self.chunk_size  # frames
        self.generated = self.taken = self.dropped = 0
        self.error: str | None = None
        self.recorded_frames = 0
        self.switches: list[str] = []  # prompts applied, in order (the asyncio side reports them)
        self._loop = loop
        self._buffer: collections.deque = collections.deque()  # (jpeg, seconds until the next)
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._due = 0.0  # when next_frame may hand out the next frame (pacing)
        self._cancel = threading.Event()
        self._pending_prompt: str | None = None
        self._finished = False
        self._on_finish = on_finish
        # not a daemon: interpreter exit waits for it (a daemon thread killed inside torch aborts
        # the process); stop() ends it within a chunk
        self._thread = threading.Thread(target=self._run, name="rf-stream")
        self.done = asyncio.Event()

    def buffered(self) -> int:
        with self._lock:
            return len(self._buffer)

    # ---------------------------------------------------------------- control (any thread)
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Asks the worker to end; it finishes the frame in hand and the recording."""
        self._cancel.set()

    def set_prompt(self, prompt: str) -> None:
        """Applied by the worker before its next chunk (the pipeline is not thread-safe, so
        ``set_prompt`` runs on the worker); a newer request replaces a pending one."""
        with self._lock:
            self._pending_prompt = prompt

    async def wait(self) -> None:
        """Until the worker thread has ended (recording finished)."""
        await self.done.wait()

    async def next_frame(self) -> bytes | None:
        """The oldest buffered JPEG, when it is due; waits for one; None once the stream has
        ended and the buffer is empty."""
        while True:
            delay = self._due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            with self._lock:
                if self._buffer:
                    jpeg, interval = self._buffer.popleft()
                    self.taken += 1
                    now, due = time.monotonic(), self._due + interval
                    # keep the clock (no drift) unless more than a frame late: then restart it
                    self._due = due if due >= now - interval else now + interval
                    return jpeg
                if self._finished:
                    return None
                self._wake_pending = False
                self._wake.clear()
            await self._wake.wait()

    # ---------------------------------------------------------------- worker thread
    def _notify(self) -> None:
        """Wakes the asyncio side; at most one pending callback, so nothing piles up on a busy
        event loop."""
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody is listening
            pass

    def _push(self, jpegs: list[bytes], interval: float) -> None:
        with self._lock:
            for jpeg in jpegs:
                if len(self._buffer) >= self.capacity:
                    self._buffer.popleft()
                    self.dropped += 1
                self._buffer.append((jpeg, interval))
        self._notify()

    def _before_chunk(self) -> bool:
        """Runs before each chunk, in the thread that generates it: real-time pacing, then the
        pending prompt, if any. False ends the stream (cancelled)."""
        pipe = self.pipeline
        if self._cancel.is_set():
            return False
        if self.pace:
            period, lead = 1.0 / pipe.fps, self.chunk_size / 2 / pipe.fps
            delay = self._clock + self.generated * period - lead - time.monotonic()
            if delay < -1.0:  # far behind real time: do not burst once faster again
                self._clock -= delay + 1.0
            elif delay > 0 and self._cancel.wait(delay):
                return False
        with self._lock:
            prompt, self._pending_prompt = self._pending_prompt, None
        if prompt is not None:
            pipe.set_prompt(prompt)
            self.switches.append(pipe.prompt)
            self._notify()
        return True

    def _chunks(self):
        """Generated chunks, each trimmed to the frames handed out before a cancel. With the
        pipeline's ``overlap`` the next chunk is generated while this one is encoded."""
        pipe = self.pipeline
        pipe.stream(self.prompt, None, seed=self.seed)
        period = 1.0 / pipe.fps
        self._clock = t0 = time.monotonic()
        chunks = pipe.resume(before_chunk=self._before_chunk)
        try:
            for chunk in chunks:
                jpegs = []
                for frame in chunk:
                    if self._cancel.is_set():
                        break
                    jpegs.append(encode_jpeg(frame, self.jpeg_quality))
                # spread this chunk over the time the next one will take (about this one's)
                now = time.monotonic()
                interval = max(period, (now - t0) / len(chunk)) if self.pace else 0.0
                t0 = now
                self._push(jpegs, interval)
                self.generated += len(jpegs)
                yield chunk[: len(jpegs)]
                if self._cancel.is_set():
                    return
        finally:
            chunks.close()

    def _run(self) -> None:
        try:
            chunks = self._chunks()
            if self.recording is None:
                for _ in chunks:
                    pass
            elif (first := next((c for c in chunks if len(c)), None)) is not None:
                pipe = self.pipeline
                self.recorded_frames = write_mp4(
                    self.recording, itertools.chain([first], chunks), fps=pipe.fps, width=pipe.width, height=pipe.height
                )
        except Exception as e:  # reported to the client; the server goes on
            self.error = f"{type(e).__name__}: {e}"
            self.recorded_frames = 0
        finally:
            if self.recorded_frames == 0:
                self.recording = None
            try:
                self._loop.call_soon_threadsafe(self.done.set)
            except RuntimeError:
                pass
            with self._lock:
                self._finished, self._wake_pending = True, False
            self._notify()
            if self._on_finish is not None:
                self._on_finish()


def remove_old(folder: Path, keep: int) -> None:
    """Deletes all but the ``keep`` newest ``*.mp4`` files of ``folder`` (bounds the disk used)."""
    files = sorted(folder.glob("*.mp4"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files[keep:]:
        try:
            os.unlink(path)
        except OSError:
            pass
