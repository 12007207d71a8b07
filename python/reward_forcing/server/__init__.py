"""Browser streaming demo (``reward-forcing serve``): FastAPI app, WebSocket JPEG frames.

Needs ``fastapi`` and ``uvicorn`` (package dependencies). See :mod:`.app` for the protocol.
"""
from __future__ import annotations

import socket

from .app import create_app, sibling_factory

__all__ = ["SEND_BUFFER", "create_app", "listen_socket", "serve", "sibling_factory"]


def serve(pipeline, *, host: str = "127.0.0.1", port: int = 8000, max_streams: int = 2,
          recordings_dir=None, log_level: str = "info", note: str | None = None) -> None:
    """Runs the demo with uvicorn until Ctrl-C; every stream shares ``pipeline``'s weights.
    One chunk is generated first, so that the first visitor does not pay the warm-up (lazy
    initialisation, kernel selection) in the first-frame latency."""
    import uvicorn

    sock = listen_socket(host, port)  # first: a taken port fails before the warm-up
    factory = sibling_factory(pipeline)
    next(factory(sink_frames=pipeline.cache.sink_frames, window_frames=pipeline.cache.window_frames,
                 alpha=pipeline.cache.alpha).stream("warm-up"))
    app = create_app(factory, max_streams=max_streams, recordings_dir=recordings_dir, note=note)
    # small control messages only; a bounded number of open connections (idle pages included)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws_max_size=64 * 1024,
                            limit_concurrency=max(32, 8 * max_streams))
    uvicorn.Server(config).run(sockets=[sock])


SEND_BUFFER = 256 * 1024


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose connections get a fixed ``SEND_BUFFER`` (Linux copies it to
    accepted sockets): without it the kernel autotunes up to 4 MiB per connection, which a
    stalled client fills before the server's own drop policy sees any backpressure. 256 KiB
    allows 2.5 MB/s at a 100 ms round trip, three times what 480p JPEG frames at 16 fps need."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.bind(address)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
