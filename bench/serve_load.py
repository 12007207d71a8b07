"""Loopback load test of the streaming demo server (``reward-forcing serve``, tiny random model).

    python bench/serve_load.py [--clients 8] [--seconds 60] [--slow 2] [--max-streams 8] \
        [--out bench/results]

Starts the server on a free 127.0.0.1 port (loopback only, by design), connects ``--clients``
WebSocket clients that each start a stream and read frames for ``--seconds``; ``--slow`` of them
read one message every 0.5 s through a tiny socket buffer, so the server must drop their frames.
Clients over ``--max-streams`` should get "busy". Reports frames delivered, generated and dropped
per client, the server's peak RSS (VmHWM) and whether it still answers afterwards; writes JSON.

``--faults N`` then runs the fault test: N clients (in waves of ``--wave``) that connect, start and
vanish in every way (close or TCP reset right after the start, during a frame, with half a
message sent, without ever starting, slow readers that give up); it reports the seconds taken,
the active streams left, ``.part`` files left in the recordings folder and the server's RSS after
it against the RSS after a warm-up wave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import base64
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def rss_kib(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def client(port: int, index: int, seconds: float, slow: bool) -> dict:
    sock = socket.socket()
    if slow:  # a small receive window: the server's send path backs up quickly
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    result = {"client": index, "slow": slow, "frames": 0, "bytes": 0, "first_frame_s": None}
    t0 = time.monotonic()
    async with websockets.connect(
        f"ws://{HOST}:{port}/ws", sock=sock, max_queue=1 if slow else 16, max_size=2**24
    ) as ws:
        await ws.send(json.dumps({"type": "start", "prompt": f"client {index}", "seed": index}))
        first = json.loads(await ws.recv())
        if first["type"] != "started":
            result.update(status=first["type"], message=first.get("message"))
            return result
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                message = await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if isinstance(message, bytes):
                result["frames"] += 1
                result["bytes"] += len(message)
                if result["first_frame_s"] is None:
                    result["first_frame_s"] = round(time.monotonic() - t0, 3)
            if slow:
                await asyncio.sleep(0.5)
        await ws.send(json.dumps({"type": "stop"}))
        async for message in ws:  # the remaining frames, then "stopped"
            if isinstance(message, str) and json.loads(message)["type"] == "stopped":
                stopped = json.loads(message)
                result.update(
                    status="ok", generated=stopped["generated"], dropped=stopped["dropped"], sent=stopped["frames"]
                )
                break
    return result


FAULTS = (
    "close_after_start",
    "reset_after_start",
    "close_mid_stream",
    "reset_mid_frame",
    "half_message",
    "never_start",
    "slow_reader",
)


def _text_frame(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_fault(port: int, how: str, start: str) -> None:
    """A hand-made WebSocket that sends half a message, or resets in the middle of a frame."""
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    frame = _text_frame(start)
    writer.write(frame if how == "reset_mid_frame" else frame[: len(frame) // 2])
    if how == "reset_mid_frame":
        await asyncio.wait_for(reader.readexactly(300), 20)  # "started" and part of a JPEG
    writer.transport.abort()  # a TCP reset: no close frame


async def fault_client(port: int, index: int, how: str) -> str:
    """One client that vanishes in the way ``how``; returns how it went (every wait is bounded)."""
    start = json.dumps({"type": "start", "prompt": f"fault {index}", "seed": index})
    try:
        if how in ("reset_mid_frame", "half_message"):
            await _raw_fault(port, how, start)
            return how
        async with websockets.connect(f"ws://{HOST}:{port}/ws", open_timeout=10) as ws:
            if how == "never_start":
                return how
            await ws.send(start)
            if how == "reset_after_start":
                ws.transport.abort()
                return how
            if how == "close_mid_stream":
                for _ in range(50):
                    if isinstance(await asyncio.wait_for(ws.recv(), 20), bytes):
                        break
            elif how == "slow_reader":
                for _ in range(3):
                    await asyncio.wait_for(ws.recv(), 20)
                    await asyncio.sleep(0.3)
        return how
    except (
        OSError,
        asyncio.TimeoutError,
        asyncio.IncompleteReadError,
        websockets.exceptions.WebSocketException,
    ) as e:  # e.g. closed as "busy" first
        return f"{how}: {type(e).__name__}"


async def run_faults(port: int, clients: int, wave: int) -> list[str]:
    outcomes = []
    for first in range(0, clients, wave):
        outcomes += await asyncio.gather(
            *(fault_client(port, i, FAULTS[i % len(FAULTS)]) for i in range(first, min(first + wave, clients)))
        )
    return outcomes


def fault_test(port: int, pid: int, recordings: Path, clients: int, wave: int) -> dict:
    """The fault test against a running server (see the module docstring)."""
    asyncio.run(run_faults(port, wave, wave))  # warm-up: every code path once
    settle(port)
    warm = rss_kib(pid)["VmRSS"]
    t0 = time.monotonic()
    outcomes = asyncio.run(run_faults(port, clients, wave))
    active = settle(port)
    wall = time.monotonic() - t0
    after = rss_kib(pid)["VmRSS"]
    return {
        "clients": clients,
        "wave": wave,
        "wall_s": round(wall, 1),
        "active_streams_after": active,
        "part_files_left": sorted(p.name for p in recordings.glob("*.part")),
        "rss_after_warmup_mib": round(warm / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "rss_growth": round(after / warm - 1, 3),
        "outcomes": {k: sum(o == k for o in outcomes) for k in sorted(set(outcomes))},
    }


def settle(port: int, timeout: float = 30.0) -> int:
    """Waits (bounded) until the server reports no active stream; returns the count left."""
    deadline = time.monotonic() + timeout
    while (active := health(port)["active_streams"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return active


async def run_clients(port: int, args) -> list[dict]:
    tasks = [client(port, i, args.seconds, i < args.slow) for i in range(args.clients)]
    return await asyncio.gather(*tasks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--slow", type=int, default=2, help="clients that read slowly")
    parser.add_argument("--max-streams", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument(
        "--faults", type=int, default=0, help="then run the fault test with this many clients (0: none)"
    )
    parser.add_argument("--wave", type=int, default=20, help="fault clients at a time")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if not (0 <= args.clients <= 64 and 0 < args.seconds <= 600 and 0 <= args.slow <= args.clients):
        parser.error("need 0 <= --clients <= 64, 0 < --seconds <= 600, 0 <= --slow <= --clients")
    if not (0 <= args.faults <= 1000 and 1 <= args.wave <= 100):
        parser.error("need 0 <= --faults <= 1000 and 1 <= --wave <= 100")

    port = free_port()
    recordings = Path(tempfile.mkdtemp(prefix="serve-load-"))
    cmd = [
        sys.executable,
        "-m",
        "reward_forcing.cli",
        "serve",
        "--port",
        str(port),
        "--max-streams",
        str(args.max_streams),
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--recordings-dir",
        str(recordings),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health(port)
                break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from exc
                time.sleep(0.2)
        idle_rss = rss_kib(server.pid)["VmRSS"]
        t0 = time.monotonic()
        results = asyncio.run(run_clients(port, args))
        wall = time.monotonic() - t0
        time.sleep(0.5)
        after = health(port)
        memory = rss_kib(server.pid)
        faults = fault_test(port, server.pid, recordings, args.faults, args.wave) if args.faults else None
    finally:
        server.terminate()
        server.wait(10)

    ok = [r for r in results if r.get("status") == "ok"]
    summary = {
        "clients": args.clients,
        "slow_clients": args.slow,
        "seconds": args.seconds,
        "max_streams": args.max_streams,
        "size": [args.height, args.width],
        "streams_served": len(ok),
        "busy": sum(r.get("status") == "busy" for r in results),
        "frames_delivered": sum(r["frames"] for r in results),
        "frames_generated": sum(r.get("generated", 0) for r in ok),
        "frames_dropped": sum(r.get("dropped", 0) for r in ok),
        "dropped_by_slow_clients": sum(r.get("dropped", 0) for r in ok if r["slow"]),
        "server_rss_idle_mib": round(idle_rss / 1024, 1),
        "server_rss_peak_mib": round(memory["VmHWM"] / 1024, 1),
        "server_rss_end_mib": round(memory["VmRSS"] / 1024, 1),
        "active_streams_after": after["active_streams"],
        "wall_s": round(wall, 1),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "faults": faults,
        "per_client": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("serve-load.json" if args.clients else "serve-faults.json")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_client"}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
