"""Atomic output files (videos, recordings, checkpoints, configs, logs).

A file is written to ``.NAME.PID.part`` beside its target and renamed over the target once
complete, so a reader never sees half a file; the ``.part`` is removed on any error, on Ctrl-C
and, in the main thread, on SIGTERM and SIGHUP (turned into ``SystemExit(128 + signal)`` while the
write runs). ``.part`` files of ours left by a process that was killed outright (SIGKILL, power
loss) are swept by the next write of the same target. Only regular files are replaced: an
existing device, FIFO, socket or folder at the target is refused (a symlink to a regular file is
followed, and the link kept).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import stat
import threading
from pathlib import Path

TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def output_target(path) -> Path:
    """The regular file that writing ``path`` replaces: ``path`` itself, or the file a symlink
    points to. ValueError for a target that exists and is not a regular file, or a folder that
    does not exist."""
    path = Path(path)
    try:
        target = path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ValueError(f"{path}: cannot follow the link ({e})") from None
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise ValueError(f"{path}: exists and is {kind}; refusing to replace it")
    if not target.parent.is_dir():
        raise ValueError(f"{path}: the folder {target.parent} does not exist")
    return target


def part_path(target: Path, pid: int | None = None) -> Path:
    return target.with_name(f".{target.name}.{os.getpid() if pid is None else pid}.part")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale_parts(target: Path) -> list[Path]:
    """Removes ``.NAME.PID.part`` files of ``target`` whose process is gone; returns them."""
    removed = []
    for part in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        pid = part.name[len(target.name) + 2 : -len(".part")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                part.unlink()
                removed.append(part)
    return removed


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_signals():
    """SIGTERM and SIGHUP raise ``SystemExit(128 + signum)`` inside the block (main thread only;
    elsewhere, e.g. in a server's worker, the block runs unchanged), so ``finally`` clauses and
    ``except BaseException`` clean-ups run as for Ctrl-C. Previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_exit) for s in TERMINATING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred():
    """SIGTERM and SIGHUP wait until the block ends, then act as they would have; main thread only.
    For writers that call back into Python from native code (``torch.save``): a handler raising
    there gets turned into a corrupt-file error (or a hang) instead of the clean exit. The signal is
    recorded by a Python handler rather than blocked: blocking covers the main thread only, and a
    process signal that another thread (tqdm's monitor) takes still runs the handler in the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in TERMINATING}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])  # the restored handler acts on it now


@contextlib.contextmanager
def atomic_output(path):
    """Yields the temporary path to write; renames it over the target (:func:`output_target`)
    when the block completes, removes it when the block raises or a signal ends it."""
    target = output_target(path)
    sweep_stale_parts(target)
    tmp = part_path(target)
    try:
        with exit_on_signals():
            yield tmp
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
