"""The streaming demo server (FastAPI test client, tiny random model at 32 x 48): page and health;
a WebSocket stream delivers JPEG frames and accepts prompt switches; invalid inputs get clear
errors and leave the socket usable; over the stream cap a client gets "busy"; a disconnect frees
the slot (and its thread); a slow client gets frames dropped with a bounded buffer; concurrent
streams share weights but not state; a failing stream is reported; recordings download, bad ids
404; cross-origin handshakes are refused; frames are paced to the video's frame rate."""

import asyncio
import threading
import time
import warnings

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("av")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from reward_forcing.pipelines import StreamingPipeline  # noqa: E402
from reward_forcing.server import create_app, sibling_factory  # noqa: E402
from reward_forcing.server.session import StreamSession  # noqa: E402
from reward_forcing.video_io import read_video  # noqa: E402

JPEG = b"\xff\xd8\xff"
HOSTS = ("testserver",)  # the TestClient's Host header


@pytest.fixture(scope="module")
def factory():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = StreamingPipeline.tiny_random(height=32, width=48)
    return sibling_factory(base)


@pytest.fixture
def make_client(factory, tmp_path):
    clients = []

    def make(**kwargs):
        kwargs.setdefault("pace", False)
        client = TestClient(create_app(factory, recordings_dir=tmp_path / "rec", allowed_hosts=HOSTS, **kwargs))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def start_msg(**overrides):
    return {"type": "start", "prompt": "a red ball", "seed": 1, **overrides}


def recv(ws):
    """The next message: a dict for JSON, bytes for a frame, None for a close."""
    message = ws.receive()
    if message["type"] == "websocket.close":
        return None
    if message.get("bytes") is not None:
        return message["bytes"]
    import json

    return json.loads(message["text"])


def recv_json(ws, kind, limit=2000):
    """Skips frames (and other messages) until a JSON message of type ``kind``."""
    for _ in range(limit):
        message = recv(ws)
        if isinstance(message, dict) and message["type"] == kind:
            return message
        assert message is not None, f"closed while waiting for {kind!r}"
    raise AssertionError(f"no {kind!r} message")


def wait_idle(client, timeout=10.0):
    """Until no stream holds a slot; then no generation thread may be left either (the slot is
    given back by the thread itself, also when the client vanished mid-stream)."""
    deadline = time.monotonic() + timeout
    while client.get("/health").json()["active_streams"]:
        assert time.monotonic() < deadline, "the stream slot was not freed"
        time.sleep(0.02)
    for thread in threading.enumerate():
        if thread.name == "rf-stream":
            thread.join(1.0)
            assert not thread.is_alive(), "a generation thread outlived its slot"


def test_page_health_and_config(make_client):
    client = make_client(max_streams=3)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="prompt"' in page.text and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external CDN
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/health").json() == {"status": "ok", "active_streams": 0, "max_streams": 3}
    assert client.get("/api/config").json()["limits"]["prompt_chars"] == [1, 500]


def test_stream_frames_prompt_switch_and_recording(make_client):
    client = make_client()
    with client.websocket_connect("/ws") as ws:
        ws.send_json(start_msg(sink_frames=2, window_frames=4, alpha=0.5))
        started = recv_json(ws, "started")
        assert (started["width"], started["height"]) == (48, 32)
        (session,) = client.app.state.sessions
        cache = session.pipeline.cache
        assert (cache.sink_frames, cache.window_frames, cache.alpha) == (2, 4, 0.5)
        frames = [f for f in (recv(ws) for _ in range(6)) if isinstance(f, bytes)][:3]  # no stats
        assert len(frames) == 3 and all(f.startswith(JPEG) for f in frames)
        assert client.get("/health").json()["active_streams"] == 1
        ws.send_json({"type": "prompt", "prompt": "  a  blue   square "})
        assert recv_json(ws, "prompt_switched")["prompt"] == "a blue square"
        ws.send_json({"type": "stop"})
        stopped = recv_json(ws, "stopped")
        assert recv(ws) is None  # closed by the server
    rec_id = started["recording_id"]
    assert stopped["generated"] >= 9 and stopped["recording"] == f"/recordings/{rec_id}.mp4"
    response = client.get(stopped["recording"])
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert response.content[4:8] == b"ftyp"
    rec_dir = client.app.state.recordings_dir
    assert [p.name for p in rec_dir.iterdir()] == [f"{rec_id}.mp4"]  # no temporary files
    decoded = read_video(rec_dir / f"{started['recording_id']}.mp4").frames
    assert len(decoded) == stopped["generated"] and decoded[0].shape == (32, 48, 3)
    wait_idle(client)


def test_prompts_with_unknown_words_get_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = StreamingPipeline.tiny_random(height=32, width=48, vocabulary=frozenset({"a", "red", "blue", "ball"}))
    app = create_app(sibling_factory(base), recordings_dir=tmp_path, pace=False, allowed_hosts=HOSTS)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_json(start_msg(prompt="a red zeppelin"))
        recv_json(ws, "started")
        message = recv(ws)  # right after "started", before any frame
        assert message["type"] == "warning" and "word(s) zeppelin in 'a red zeppelin'" in message["message"]
        ws.send_json({"type": "prompt", "prompt": "a blue ball"})
        recv_json(ws, "prompt_switched")
        ws.send_json({"type": "prompt", "prompt": "a purple ball"})
        warning = recv_json(ws, "warning")
        assert "word(s) purple in 'a purple ball'" in warning["message"]
        ws.send_json({"type": "stop"})
        recv_json(ws, "stopped")
        wait_idle(client)


@pytest.mark.parametrize(
    "name", ["abc", "../../etc/passwd", "A" * 32, "0" * 31, "0" * 32, "0" * 32 + "/..", "%2e%2e%2fsecret"]
)
def test_bad_recording_ids_404(make_client, name):
    client = make_client()
    assert client.get(f"/recordings/{name}.mp4").status_code == 404


def test_invalid_inputs_get_clear_errors(make_client):
    client = make_client()
    cases = [
        (start_msg(prompt=""), "prompt"),
        (start_msg(prompt="   "), "the prompt is empty"),
        (start_msg(prompt="x" * 501), "at most 500 characters"),
        (start_msg(seed=-1), "seed"),
        (start_msg(seed=2**32), "seed"),
        (start_msg(seed=1.5), "seed"),
        (start_msg(seed="3"), "seed"),
        (start_msg(sink_frames=13), "sink_frames"),
        (start_msg(window_frames=0), "window_frames"),
        (start_msg(alpha=1.5), "alpha"),
        (start_msg(alpha="high"), "alpha: must be a number"),
        (start_msg(alpha=True), "alpha: must be a number"),
        (start_msg(path="/etc/passwd"), "unknown field 'path'"),
        ({"type": "prompt", "prompt": "x"}, 'expected a "start" message first'),
        ([1, 2], "JSON object"),
    ]
    with client.websocket_connect("/ws") as ws:
        for message, expected in cases:
            ws.send_json(message)
            reply = recv(ws)
            assert reply["type"] == "error" and expected in reply["message"], (message, reply)
        ws.send_text("{not json")
        assert "not valid JSON" in recv(ws)["message"]
        ws.send_bytes(b"\x00")
        assert "JSON text" in recv(ws)["message"]
        ws.send_json(start_msg())  # the socket is still usable
        recv_json(ws, "started")
        ws.send_json({"type": "prompt", "prompt": " \n "})
        error = recv_json(ws, "error")["message"]
        assert "invalid prompt switch: prompt: the prompt is empty" in error
        ws.send_json({"type": "start", "prompt": "again"})
        assert "unknown message type 'start'" in recv_json(ws, "error")["message"]
        assert isinstance(recv(ws), bytes)  # still streaming
    wait_idle(client)


def test_busy_over_cap_and_disconnect_frees_the_slot(make_client):
    client = make_client(max_streams=1)
    with client.websocket_connect("/ws") as first:
        first.send_json(start_msg())
        recv_json(first, "started")
        assert isinstance(recv(first), bytes)
        with client.websocket_connect("/ws") as second:
            second.send_json(start_msg())
            busy = recv(second)
            assert busy["type"] == "busy" and "busy" in busy["message"]
            assert recv(second) is None  # closed, not left hanging
    # the first client vanished mid-stream: its slot comes back within a chunk's compute
    t0 = time.monotonic()
    wait_idle(client)
    assert time.monotonic() - t0 < 5
    with client.websocket_connect("/ws") as third:
        third.send_json(start_msg())
        recv_json(third, "started")
        assert recv(third).startswith(JPEG)
    wait_idle(client)
    assert client.get("/health").json()["status"] == "ok"


def test_cross_origin_handshake_refused(make_client):
    client = make_client()
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws:
            ws.receive()
    with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
        ws.send_json(start_msg(prompt=""))
        assert recv(ws)["type"] == "error"


def test_factory_failure_is_reported(tmp_path):
    def broken(**kwargs):
        raise RuntimeError("out of memory")

    with TestClient(create_app(broken, recordings_dir=tmp_path, allowed_hosts=HOSTS)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json(start_msg())
            reply = recv(ws)
            assert reply["type"] == "error" and "out of memory" in reply["message"]
            assert recv(ws) is None
        assert client.get("/health").json()["active_streams"] == 0


def test_slow_client_drops_frames_with_a_bounded_buffer(factory):
    """Nobody reads for a while: generation goes on, the buffer never holds more than
    queue_size chunks of frames, the rest are dropped and counted; the reader then gets the
    newest."""

    async def run():
        session = StreamSession(
            factory(sink_frames=3, window_frames=3, alpha=0.999),
            "slow",
            0,
            loop=asyncio.get_running_loop(),
            queue_size=2,
            pace=False,
        )
        session.start()
        peak = 0
        deadline = time.monotonic() + 20
        while session.generated < 60 and time.monotonic() < deadline:
            peak = max(peak, session.buffered())
            await asyncio.sleep(0.005)
        session.stop()
        await session.wait()
        unread = (session.generated, session.dropped)
        frame = await session.next_frame()
        while await session.next_frame() is not None:
            pass
        return session, peak, frame, unread

    session, peak, frame, (generated, dropped) = asyncio.run(run())
    assert session.capacity == 24  # 2 chunks of 12 frames
    assert generated >= 60 and peak <= session.capacity
    assert dropped == generated - session.capacity
    assert session.taken + session.dropped == session.generated
    assert frame.startswith(JPEG) and session.error is None


def test_session_paces_to_the_frame_rate(factory):
    async def run():
        session = StreamSession(
            factory(sink_frames=3, window_frames=3, alpha=0.999), "paced", 0, loop=asyncio.get_running_loop(), pace=True
        )
        t0 = time.monotonic()
        session.start()
        for _ in range(9):
            assert await session.next_frame() is not None
        elapsed = time.monotonic() - t0
        session.stop()
        await session.wait()
        return elapsed

    assert asyncio.run(run()) >= 8 / 16 - 0.05  # 16 fps: frame 9 is due at 0.5 s


def test_stop_before_any_frame_leaves_no_file(factory, tmp_path):
    async def run():
        session = StreamSession(
            factory(sink_frames=0, window_frames=3, alpha=1.0),
            "x",
            0,
            loop=asyncio.get_running_loop(),
            recording=tmp_path / "r.mp4",
        )
        session.stop()
        session.start()
        await session.wait()
        return session

    session = asyncio.run(run())
    assert session.error is None and session.recording is None and list(tmp_path.iterdir()) == []


def test_serve_cli_rejects_bad_arguments(capsys):
    from reward_forcing.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port must be in [1, 65535]" in capsys.readouterr().err
    assert main(["serve", "--max-streams", "0"]) == 2
    assert "--max-streams must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "/nonexistent"]) == 2
    assert "together" in capsys.readouterr().err


def test_listen_socket_caps_the_send_buffer():
    from reward_forcing.server import SEND_BUFFER, listen_socket

    sock = listen_socket("127.0.0.1", 0)
    with sock:
        assert sock.getsockname()[0] == "127.0.0.1"
        import socket

        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * SEND_BUFFER


def test_concurrent_streams_share_weights_not_state(make_client):
    """Two streams at once (shared model, own caches): same seed and prompt, same frames; a
    different seed, different frames."""
    client = make_client(max_streams=3)
    with (
        client.websocket_connect("/ws") as a,
        client.websocket_connect("/ws") as b,
        client.websocket_connect("/ws") as c,
    ):
        for ws, seed in ((a, 5), (b, 5), (c, 6)):
            ws.send_json(start_msg(seed=seed))
            recv_json(ws, "started")
        assert client.get("/health").json()["active_streams"] == 3
        first = [[m for m in (recv(ws) for _ in range(30)) if isinstance(m, bytes)][:9] for ws in (a, b, c)]
    assert len(first[0]) == 9 and first[0] == first[1] and first[0] != first[2]
    wait_idle(client)


def test_stream_failure_is_reported_and_frees_the_slot(factory, tmp_path):
    def failing(**kwargs):
        pipe = factory(**kwargs)
        real, calls = pipe.next_chunk, []

        def next_chunk():
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("CUDA out of memory")
            return real()

        pipe.next_chunk = next_chunk
        return pipe

    with TestClient(create_app(failing, recordings_dir=tmp_path, pace=False, allowed_hosts=HOSTS)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json(start_msg())
            error = recv_json(ws, "error")
            assert "the stream failed: RuntimeError: CUDA out of memory" in error["message"]
            stopped = recv_json(ws, "stopped")
            assert stopped["generated"] == 9 and stopped["recording"] is None
        wait_idle(client)
        assert list(tmp_path.iterdir()) == []  # the partial recording was removed
