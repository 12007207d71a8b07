"""Decode chunk k while chunk k+1 is denoised.

Two worker threads and two bounded queues::

    denoise thread --latents (<= depth)--> decode thread --frames (<= depth)--> caller

The denoise thread runs ``produce()`` (the pipeline's :meth:`next_latents`) on the current CUDA
stream and records an event after each chunk; the decode thread makes its own CUDA stream wait
for that event and decodes there, so the two run concurrently on the GPU and the decode's host
work (kernel launches, the copy of the frames to the host) overlaps the next chunk's. On a CPU
the threads alone give the overlap (torch releases the GIL in its kernels). Each stage is one
thread reading a FIFO, so frames come out in stream order, identical to the sequential loop's.

Backpressure: a full queue blocks the stage before it, so the denoiser runs at most ``depth``
chunks ahead of the decoder, and the decoder ``depth`` chunks ahead of a slow caller: memory
stays bounded. Shutdown: closing the iterator (or leaving a ``for`` loop over it, or dropping
it) stops both threads after the chunk in hand and joins them. An exception in either thread is
re-raised in the caller, at the position of the chunk it happened in.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import torch

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def overlapped(
    produce: Callable[[], torch.Tensor],
    decode: Callable[[torch.Tensor], object],
    *,
    more: Callable[[], bool],
    before: Callable[[], bool] | None = None,
    depth: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator:
    """Iterates ``decode(produce())`` while ``more()``, with produce and decode overlapped (see
    the module doc). ``before()``, when given, runs in the producing thread before each chunk
    (prompt switches, pacing); returning False ends the stream. ``device``: where ``produce``
    computes; on CUDA the decode runs on a second stream."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    stop = threading.Event()
    latents: queue.Queue = queue.Queue(depth)
    frames: queue.Queue = queue.Queue(depth)

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def denoise() -> None:
        try:
            with torch.no_grad():
                while not stop.is_set() and more():
                    if before is not None and before() is False:
                        break
                    x = produce()
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record()
                    if not put(latents, (x, event)):
                        return
            put(latents, _END)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            put(latents, _Failure(e))

    def decode_loop() -> None:
        stream = torch.cuda.Stream(device) if cuda else None
        try:
            while True:
                try:
                    item = latents.get(timeout=0.05)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is _END or isinstance(item, _Failure):
                    put(frames, item)
                    return
                x, event = item
                with torch.no_grad():
                    if stream is None:
                        out = decode(x)
                    else:
                        with torch.cuda.stream(stream):
                            stream.wait_event(event)
                            x.record_stream(stream)  # made on the denoise stream, used here
                            out = decode(x)
                if not put(frames, out):
                    return
        except BaseException as e:  # noqa: BLE001
            put(frames, _Failure(e))

    targets = [denoise, decode_loop]
    if cuda:  # the worker threads compute on the caller's device
        index = device.index if device.index is not None else torch.cuda.current_device()
        targets = [_on_device(f, index) for f in targets]
    threads = [threading.Thread(target=f, name=name) for f, name in zip(targets, ("rf-denoise", "rf-decode"))]
    return _iterate(threads, frames, stop)


def _on_device(fn, index: int):
    def run():
        torch.cuda.set_device(index)
        fn()

    return run


def _iterate(threads, frames: queue.Queue, stop: threading.Event):
    for t in threads:
        t.start()
    try:
        while True:
            item = frames.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        for t in threads:
            t.join()
