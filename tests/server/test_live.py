"""The demo server under hostile or vanishing clients, on a real uvicorn (loopback, the settings
of ``reward-forcing serve``) with real WebSocket clients: a client that vanishes at any point gives
its stream slot back and leaves no partial recording; requests naming a foreign Host (DNS
rebinding) are refused; absurd messages get an error, not a dead connection; idle sockets do not
starve the page; SIGTERM/SIGHUP end the server with finished recordings and no ``.part`` file."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest

pytest.importorskip("fastapi")
websockets = pytest.importorskip("websockets")
av = pytest.importorskip("av")

from websockets.sync.client import connect  # noqa: E402

from live import (  # noqa: E402
    HOST,
    get,
    handshake,
    health,
    live_server,
    reset,
    start_message,
    text_frame,
    wait_idle,
)
from reward_forcing.pipelines import StreamingPipeline  # noqa: E402
from reward_forcing.server import create_app, sibling_factory  # noqa: E402


@pytest.fixture(scope="module")
def factory():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = StreamingPipeline.tiny_random(height=32, width=48)
    return sibling_factory(base)


@pytest.fixture
def server(factory, tmp_path):
    """(port, recordings folder) of a live server with ONE stream slot: a leaked slot makes the
    next client "busy"."""
    rec = tmp_path / "rec"
    with live_server(create_app(factory, max_streams=1, pace=False, recordings_dir=rec)) as port:
        yield port, rec
    assert not [t for t in threading.enumerate() if t.name == "rf-stream"], "a worker outlived the server"


def no_part_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []


def vanish(port: int, how: str) -> None:
    url = f"ws://{HOST}:{port}/ws"
    if how == "close_after_start":  # the case: start, close at once
        with connect(url) as ws:
            ws.send(start_message())
    elif how == "close_after_frames":
        with connect(url) as ws:
            ws.send(start_message())
            while not isinstance(ws.recv(timeout=10), bytes):
                pass
    elif how == "reset_after_start":
        status, sock = handshake(port)
        assert status == 101
        sock.sendall(text_frame(start_message()))
        reset(sock)
    elif how == "half_start_message":
        status, sock = handshake(port)
        frame = text_frame(start_message())
        sock.sendall(frame[: len(frame) // 2])
        reset(sock)
    elif how == "reset_mid_frame":
        status, sock = handshake(port)
        sock.sendall(text_frame(start_message()))
        got = b""
        while len(got) < 300:  # the started message and part of the first JPEG frame
            got += sock.recv(300 - len(got))
        reset(sock)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["close_after_start", "close_after_frames", "reset_after_start", "half_start_message", "reset_mid_frame"]
)
def test_vanished_client_gives_the_slot_back(server, how):
    port, rec = server
    vanish(port, how)
    wait_idle(port)  # base b543e33, close_after_start: the slot was never given back
    assert no_part_files(rec)
    with connect(f"ws://{HOST}:{port}/ws") as ws:  # the one slot is free again
        ws.send(start_message())
        assert json.loads(ws.recv(timeout=10))["type"] == "started"
    wait_idle(port)


def test_foreign_host_refused(server):
    """DNS rebinding: a page on evil.example re-resolved to 127.0.0.1 sends Host and Origin
    evil.example. Base b543e33 answered 200 and accepted the WebSocket (101)."""
    port, _ = server
    evil = f"evil.example:{port}"
    for path in ("/", "/health", "/api/config", "/recordings/" + "0" * 32 + ".mp4"):
        assert get(port, path, host=evil)[0] == 400, path
    status, sock = handshake(port, host=evil, origin=f"http://{evil}")
    sock.close()
    assert status != 101
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert get(port, "/health", host=host)[0] == 200, host
        status, sock = handshake(port, host=host, origin=f"http://{host}")
        sock.close()
        assert status == 101, host


def test_absurd_messages_get_errors_and_keep_the_socket(server):
    """Base b543e33: a 401-digit alpha (OverflowError) and 2000-deep JSON (RecursionError) killed
    the connection with a traceback."""
    port, _ = server
    with connect(f"ws://{HOST}:{port}/ws") as ws:
        ws.send('{"type": "start", "prompt": "x", "alpha": ' + "9" * 401 + "}")
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and "alpha" in reply["message"], reply
        ws.send("[" * 2000 + "]" * 2000)
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "error" and "nested too deeply" in reply["message"], reply
        ws.send(start_message())
        assert json.loads(ws.recv(timeout=10))["type"] == "started"
    wait_idle(port)


def test_idle_sockets_do_not_starve_the_page(server):
    """40 WebSockets that never start plus 40 TCP connections that never send a byte. Base
    b543e33 (uvicorn limit 32 connections) answered 503."""
    port, _ = server
    idle = []
    try:
        for _ in range(40):
            idle.append(socket.create_connection((HOST, port)))
            status, sock = handshake(port)
            idle.append(sock)
            assert status == 101
        assert get(port, "/health")[0] == 200
        assert get(port, "/")[0] == 200
    finally:
        for sock in idle:
            sock.close()
    wait_idle(port)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_ends_the_server_with_finished_recordings(tmp_path, signum):
    """``reward-forcing serve`` with a stream running gets SIGTERM or SIGHUP: it exits, the
    recording is a complete mp4 and no ``.part`` file is left (base b543e33: SIGHUP killed it
    mid-recording, leaving the ``.part``)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    rec = tmp_path / "rec"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reward_forcing.cli",
            "serve",
            "--random-model",
            "--height",
            "32",
            "--width",
            "48",
            "--port",
            str(port),
            "--recordings-dir",
            str(rec),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                health(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        with connect(f"ws://{HOST}:{port}/ws") as ws:
            ws.send(start_message())
            frames = 0
            while frames < 3:
                frames += isinstance(ws.recv(timeout=30), bytes)
            proc.send_signal(signum)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # a graceful shutdown; uvicorn then re-raises the SIGTERM it handled (status -15)
    assert proc.returncode in (0, -signal.SIGTERM), proc.stderr.read().decode()[-2000:]
    assert no_part_files(rec)
    videos = list(rec.glob("*.mp4"))
    assert len(videos) == 1
    with av.open(str(videos[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 3
