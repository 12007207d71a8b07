"""Reading and writing video files (PyAV), for the CLI, the server, the evaluation and the tests.

PyAV is imported when a file is read or written, so that importing this module (and the CLI)
stays cheap.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from .files import atomic_output


class Video(NamedTuple):
    frames: np.ndarray  # uint8 [F, H, W, 3] RGB
    fps: float
    codec: str


def read_video(path, *, min_frames: int = 1) -> Video:
    """All frames of a file's first video stream, its frame rate (16 when the file does not say)
    and its codec. FileNotFoundError when it is missing; ValueError when it is unreadable or has
    fewer than ``min_frames`` frames."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            rate = stream.average_rate or stream.guessed_rate
            codec = stream.codec_context.name
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable video ({e})") from None
    if len(frames) < max(1, min_frames):
        raise ValueError(f"{path}: {len(frames)} frame(s); need at least {max(1, min_frames)}")
    return Video(np.stack(frames), float(rate) if rate else 16.0, codec)


class VideoFrames:
    """A file's first video stream decoded frame by frame (uint8 [H, W, 3] RGB) each time it is
    iterated, so the clip is never held in memory; ``fps`` as :func:`read_video`. ValueError when
    the file is not a readable video."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist")
        with self._open() as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 16.0

    def _open(self):
        import av

        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path}: not a readable video ({e})") from None
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.path}: no video stream")
        return container

    def __iter__(self):
        import av

        with self._open() as container:
            try:
                for frame in container.decode(container.streams.video[0]):
                    yield frame.to_ndarray(format="rgb24")
            except (av.FFmpegError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path}: not a readable video ({e})") from None


def write_mp4(path, chunks: Iterable[np.ndarray], *, fps: float, width: int, height: int, progress=None) -> int:
    """Encodes ``uint8 [F, H, W, 3]`` chunks into ``path`` (H.264, yuv420p) atomically
    (:func:`reward_forcing.files.atomic_output`: a ``.part`` file beside it, renamed over it once
    complete, removed on any error, Ctrl-C, SIGTERM or SIGHUP). Returns the frames written."""
    import av

    frames = 0
    with atomic_output(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=frame_rate(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for chunk in chunks:
                for image in chunk:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                frames += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
            container.mux(stream.encode())
    return frames


def frame_rate(fps: float) -> Fraction:
    """``fps`` as the exact fraction the mp4 records (ValueError when it rounds to 0)."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"frame rate {fps:g} is too small for an mp4 (at least 1/1001 fps)")
    return rate
