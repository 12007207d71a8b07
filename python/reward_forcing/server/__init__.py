"""Browser streaming demo (``reward-forcing serve``): FastAPI app, WebSocket JPEG frames.

Needs ``fastapi`` and ``uvicorn`` (package dependencies). See :mod:`.app` for the protocol.
"""

from __future__ import annotations

import socket

from .app import LOOPBACK_HOSTS, create_app, sibling_factory

__all__ = [
    "LOOPBACK_HOSTS",
    "SEND_BUFFER",
    "allowed_hosts",
    "create_app",
    "listen_socket",
    "serve",
    "sibling_factory",
    "uvicorn_config",
]

MAX_CONNECTIONS = 256  # uvicorn answers 503 beyond this many open connections (idle ones count)


def allowed_hosts(host: str, extra=()) -> tuple[str, ...]:
    """The ``Host`` header names the demo answers: loopback, the bound address (unless it is a
    wildcard such as 0.0.0.0, which no client puts in a URL) and ``extra`` (``--allowed-host``)."""
    named = () if host in ("0.0.0.0", "::", "") else (host,)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *named, *extra)))


def uvicorn_config(app, *, host: str, port: int, log_level: str = "info"):
    """uvicorn's settings for the demo: small control messages only; a bounded number of open
    connections, high enough that idle pages and sockets (capped by the app) cannot starve it."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, ws_max_size=64 * 1024, limit_concurrency=MAX_CONNECTIONS
    )


def serve(
    pipeline,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_streams: int = 2,
    recordings_dir=None,
    log_level: str = "info",
    note: str | None = None,
    extra_hosts=(),
) -> None:
    """Runs the demo with uvicorn until Ctrl-C, SIGTERM or SIGHUP (all three end the streams,
    finish their recordings and exit); every stream shares ``pipeline``'s weights. One chunk is
    generated first, so that the first visitor does not pay the warm-up (lazy initialisation,
    kernel selection) in the first-frame latency."""
    import signal

    import uvicorn

    sock = listen_socket(host, port)  # first: a taken port fails before the warm-up
    factory = sibling_factory(pipeline)
    next(
        factory(
            sink_frames=pipeline.cache.sink_frames,
            window_frames=pipeline.cache.window_frames,
            alpha=pipeline.cache.alpha,
        ).stream("warm-up")
    )
    app = create_app(
        factory,
        max_streams=max_streams,
        recordings_dir=recordings_dir,
        note=note,
        allowed_hosts=allowed_hosts(host, extra_hosts),
    )
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level))
    # uvicorn handles SIGINT and SIGTERM; a hang-up must not kill the process mid-recording
    signal.signal(signal.SIGHUP, lambda signum, frame: server.handle_exit(signal.SIGTERM, frame))
    server.run(sockets=[sock])


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
