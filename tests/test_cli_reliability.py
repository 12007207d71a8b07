"""``reward-forcing generate`` under hostile targets, signals and faults: non-regular ``--out``
targets are refused (exit 2, untouched), a symlink keeps pointing at the new video; SIGTERM and
SIGHUP leave no ``.part``; a dead process's stale ``.part`` is swept; write errors, absurd frame
rates, a folder as ``--prompts`` and a far-future switch give one line (or just work)."""

import os
import resource
import signal
import stat
import subprocess
import sys
import time

import pytest

av = pytest.importorskip("av")

from reward_forcing.cli import main  # noqa: E402

SMALL = ["--random-model", "--height", "32", "--width", "48"]
CLI = [sys.executable, "-m", "reward_forcing.cli", "generate", *SMALL]


def one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "warning:" not in line]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def frames_in(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("kind", ["fifo", "char_device", "link_to_fifo", "folder_link"])
def test_non_regular_out_is_refused(tmp_path, capsys, kind):
    """Base b543e33 replaced a FIFO or device node (as root: /dev/full) by the mp4."""
    target = tmp_path / "target"
    if kind in ("fifo", "link_to_fifo"):
        os.mkfifo(target)
    elif kind == "char_device":
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a private /dev/null
    else:
        target.mkdir()
    out = target if kind in ("fifo", "char_device") else tmp_path / "link.mp4"
    if out != target:
        out.symlink_to(target)
    mode = os.lstat(target).st_mode
    assert main(["generate", "--prompt", "x", "--out", str(out), *SMALL]) == 2
    assert "refusing to replace it" in one_error_line(capsys)
    assert os.lstat(target).st_mode == mode  # untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_symlink_to_a_regular_file_is_followed(tmp_path):
    """The video replaces the link's target atomically (temporary file beside the target); the
    link stays a link. Base b543e33 replaced the link itself by a regular file."""
    (tmp_path / "videos").mkdir()
    target = tmp_path / "videos" / "real.mp4"
    target.write_bytes(b"old")
    link = tmp_path / "latest.mp4"
    link.symlink_to(target)
    assert main(["generate", "--prompt", "x", "--seconds", "0.5", "--out", str(link), *SMALL]) == 0
    assert link.is_symlink() and frames_in(target) == 8
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["real.mp4"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_leaves_no_part_file(tmp_path, signum):
    """Base b543e33: SIGTERM/SIGHUP killed the process and left ``.v.mp4.PID.part``."""
    out = tmp_path / "v.mp4"
    proc = subprocess.Popen(
        [*CLI, "--prompt", "x", "--seconds", "600", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".v.mp4.*.part")):  # frames are being written
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signum, err
    assert "not written" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_stale_part_of_a_dead_process_is_swept(tmp_path):
    """A ``.part`` left by a SIGKILLed run goes at the next write of the same file; one of a live
    process (another run writing now) stays."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".v.mp4.{dead.pid}.part"
    live = tmp_path / f".v.mp4.{os.getpid()}.part"  # this test process: alive
    for p in (stale, live):
        p.write_bytes(b"half")
    result = subprocess.run(
        [*CLI, "--prompt", "x", "--seconds", "0.5", "--out", str(tmp_path / "v.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["v.mp4", live.name])


def test_write_error_is_one_line_and_leaves_nothing(tmp_path):
    """The file-size limit makes the mp4 write fail (EFBIG, like ENOSPC). Base b543e33: the
    .part was removed but a traceback was printed."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "v.mp4"
    result = subprocess.run(
        [*CLI, "--prompt", "x", "--seconds", "30", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    err = [line for line in result.stderr.splitlines() if line.startswith("reward-forcing: error")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(err) == 1 and "cannot write" in err[0] and "Traceback" not in result.stderr, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["--fps", "1e-6"], "frame rate"),  # base b543e33: an mp4 with a 0 time base
    ],
)
def test_absurd_values_exit_2(tmp_path, capsys, args, words):
    out = tmp_path / "v.mp4"
    assert main(["generate", "--prompt", "x", "--out", str(out), *SMALL, *args]) == 2
    assert words in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_prompts_folder_is_named_as_such(tmp_path, capsys):
    """Base b543e33 said the folder "does not exist"."""
    assert main(["generate", "--prompts", str(tmp_path), "--out", str(tmp_path / "v.mp4"), *SMALL]) == 2
    assert "is a folder" in one_error_line(capsys)


def test_far_future_switch_does_not_hang(tmp_path):
    """A switch at 1e9 s (base b543e33: chunk_at counted ~1e9 chunks) or at 1e300 s."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("0\ta red ball\n1e9\tb\n1e300\tc\n")
    t0 = time.monotonic()
    assert (
        main(["generate", "--prompts", str(prompts), "--seconds", "0.5", "--out", str(tmp_path / "v.mp4"), *SMALL]) == 0
    )
    assert time.monotonic() - t0 < 60
