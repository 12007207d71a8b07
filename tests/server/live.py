"""Helpers of the live-server tests: a real uvicorn (the demo's own settings) on a free loopback
port in a thread of the test process, raw HTTP requests with any Host header, and a minimal
raw-socket WebSocket client for the ways of vanishing a library client does not offer
(half a message, a reset in the middle of a frame)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import struct
import threading
import time

from reward_forcing.server import listen_socket, uvicorn_config

HOST = "127.0.0.1"


@contextlib.contextmanager
def live_server(app):
    """Yields the port of a running uvicorn serving ``app``; stops it (gracefully) after."""
    import uvicorn

    sock = listen_socket(HOST, 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET with the given Host header (default: the address itself)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host or f"{HOST}:{port}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def health(port: int) -> dict:
    status, body = get(port, "/health")
    assert status == 200, status
    return json.loads(body)


def wait_idle(port: int, timeout: float = 15.0) -> None:
    """Until the server reports no active stream (AssertionError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while (active := health(port)["active_streams"]) != 0:
        assert time.monotonic() < deadline, f"{active} stream slot(s) never given back"
        time.sleep(0.05)


def handshake(port: int, host: str | None = None, origin: str | None = None) -> tuple[int, socket.socket]:
    """Opens a WebSocket by hand: (HTTP status of the handshake, the socket)."""
    sock = socket.create_connection((HOST, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host or f'{HOST}:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, sock


def text_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455 §5.2)."""
    payload, mask = text.encode(), os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def reset(sock: socket.socket) -> None:
    """Closes with a TCP reset (no close frame, no FIN): a client that crashed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def start_message(**overrides) -> str:
    return json.dumps({"type": "start", "prompt": "a red ball", "seed": 1, **overrides})
