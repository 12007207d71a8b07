"""``reward-forcing`` command line.

``reward-forcing generate --prompt "..." --seconds 60 --out video.mp4`` streams a video chunk by
chunk into an H.264 mp4. The file appears only when complete: frames go to a temporary file in
the output's folder, renamed over ``--out`` at the end (removed on error or Ctrl-C).

``--prompts FILE`` switches prompts at given times. One switch per line: the time in seconds, a
tab (or spaces), the prompt; blank lines and lines starting with ``#`` are ignored. A line at
time 0 may replace ``--prompt``::

    0	a red circle moving to the right on a black background
    4.5	a blue square sliding to the left on a black background

Bad arguments print one line on stderr and exit with status 2.

``reward-forcing serve [--host 127.0.0.1] [--port 8000] [--max-streams 2]`` runs the browser demo
(live frames, prompt switching, recording download; see :mod:`reward_forcing.server`).

``reward-forcing train --config run.yaml --stage teacher|ode-init|dmd`` runs a training stage
(:mod:`reward_forcing.train`; the same as ``python -m reward_forcing.train``).

``reward-forcing eval VIDEO.mp4 [VIDEO2 ...] [--prompt "..."] --out DIR`` scores videos
(:mod:`reward_forcing.eval`; with a world prompt, the ground-truth scores too) and writes a
markdown + JSON + PNG report to DIR.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

from .video_io import frame_rate, write_mp4

PROG = "reward-forcing"
_DTYPES = ("float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .pipelines.accelerate import ACCELERATE_MODES
    from .train import run as train_run

    parser = _Parser(prog=PROG, description="Real-time streaming text-to-video (Reward Forcing).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser(
        "generate",
        help="generate a video into an mp4 file",
        description="Stream a video chunk by chunk into an H.264 mp4 file.",
        epilog="--prompts FILE: one 'SECONDS<TAB>prompt' line per switch; '#' comments and blank lines are ignored.",
    )
    g.add_argument("--prompt", help="the text prompt (optional when --prompts has a line at 0)")
    g.add_argument("--seconds", type=_positive_float, default=5.0, help="video length (default 5)")
    g.add_argument("--out", required=True, type=Path, help="output .mp4 path")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.add_argument("--prompts", type=Path, help="timed prompt switches (see below)")
    g.add_argument(
        "--checkpoint",
        type=Path,
        help="transformer weights (Wan safetensors, Self/Reward Forcing .pt, or a diffusers folder)",
    )
    g.add_argument(
        "--text-encoder",
        type=Path,
        help="UMT5 encoder: a transformers or diffusers "
        "folder, Wan's models_t5_umt5-xxl-enc-bf16.pth or its release folder",
    )
    g.add_argument(
        "--vae",
        type=Path,
        help="Wan VAE: a diffusers folder, Wan2.1_VAE.pth or Wan's "
        "release folder; or a TAEHV taew2_1 .pth/.safetensors file (light decoder)",
    )
    g.add_argument(
        "--random-model",
        action="store_true",
        help="use a tiny RANDOM model instead of the embedded default (tests, timing)",
    )
    g.add_argument(
        "--height", type=int, help="pixels (default 480 for Wan checkpoints, 64 for the embedded and the random model)"
    )
    g.add_argument(
        "--width",
        type=int,
        help="pixels (default 832 for Wan checkpoints, 64 for the embedded model, 112 for the random one)",
    )
    g.add_argument(
        "--sink-frames",
        type=int,
        help="EMA-Sink frames (0: plain window; default 3, the embedded model's own setting for it)",
    )
    g.add_argument("--window-frames", type=int, help="sliding-window frames (default 3 or the embedded model's)")
    g.add_argument("--chunk-frames", type=int, help="latent frames per chunk (default 3 or the embedded model's)")
    g.add_argument("--alpha", type=float, help="EMA-Sink factor (1: frozen sink; default 0.999)")
    g.add_argument("--sink-dtype", choices=_DTYPES, default="float32", help="EMA-Sink precision")
    g.add_argument("--recache", action="store_true", help="re-encode the cache under the new prompt at each switch")
    g.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    g.add_argument("--fps", type=_positive_float, help="frame rate (default 16)")
    g.add_argument(
        "--accelerate",
        choices=ACCELERATE_MODES,
        default="none",
        help="transformer acceleration: CUDA graphs replayed per denoising "
        "step (GPU; eager on a CPU), torch.compile of the blocks, or both (default none)",
    )
    g.add_argument(
        "--no-overlap",
        action="store_true",
        help="decode each chunk after it is denoised instead of while the next one is "
        "(overlap is on by default on CUDA)",
    )

    s = sub.add_parser(
        "serve",
        help="browser demo: watch and steer a stream live",
        description="Serve the streaming demo page (FastAPI + uvicorn); sink, "
        "window and alpha are chosen per stream in the page.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--max-streams", type=int, default=2, help="concurrent streams (default 2)")
    s.add_argument("--recordings-dir", type=Path, help="where recordings go (default: a new temporary folder)")
    s.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients use in the URL besides loopback and --host "
        "(requests naming another host are refused), repeatable",
    )
    for name in (
        "--checkpoint",
        "--text-encoder",
        "--vae",
        "--random-model",
        "--height",
        "--width",
        "--chunk-frames",
        "--sink-dtype",
        "--recache",
        "--device",
        "--fps",
    ):
        action = next(a for a in g._actions if name in a.option_strings)
        s._add_action(action)  # share the option (help, type, default) with generate
    s.set_defaults(sink_frames=None, window_frames=None, alpha=None)

    t = sub.add_parser(
        "train",
        help="train: (teacher,) ODE init, then Re-DMD (reward_forcing.train)",
        description="Run a training stage from a YAML config of TrainConfig fields "
        "(same as python -m reward_forcing.train).",
    )
    train_run.add_arguments(t)

    e = sub.add_parser(
        "eval",
        help="evaluate mp4 videos: motion, copying, drift, flicker report",
        description="Score videos (docs/design.md §8: dynamic degree, frame copying, drift, "
        "flicker; with --prompt, the world's ground-truth scores) and "
        "write report.md, results.json and PNG plots to --out.",
    )
    e.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="mp4 (or any video PyAV reads)")
    e.add_argument(
        "--prompt",
        help="the world prompt the videos were made from (adds found, colour, "
        "direction, keeps-moving and adherence scores)",
    )
    e.add_argument("--out", required=True, type=Path, help="report folder (created if needed)")
    e.add_argument("--title", default="Evaluation", help="report title")
    return parser


def _read_prompts(path: Path) -> list[tuple[float, str]]:
    if path.is_dir():
        raise ValueError(f"--prompts {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"--prompts file {path} does not exist")
    switches = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        try:
            seconds = float(parts[0])
        except ValueError:
            seconds = math.nan
        if len(parts) < 2 or not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"{path}:{number}: expected 'SECONDS<TAB>prompt' with SECONDS >= 0, got {line!r}")
        switches.append((seconds, parts[1]))
    if not switches:
        raise ValueError(f"--prompts file {path} has no switches")
    return switches


def _pipeline(args):
    import torch

    from .models import default as default_model
    from .pipelines import StreamingPipeline

    paths = {"--checkpoint": args.checkpoint, "--text-encoder": args.text_encoder, "--vae": args.vae}
    given = [name for name, p in paths.items() if p is not None]
    if given and len(given) < 3:
        raise ValueError(f"give --checkpoint, --text-encoder and --vae together (got only {', '.join(given)})")
    for name, p in paths.items():
        if p is not None and not p.exists():
            raise FileNotFoundError(f"{name} {p} does not exist")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"--device {args.device}: {e}") from None
    kwargs = dict(
        sink_dtype=getattr(torch, args.sink_dtype),
        recache=args.recache,
        offload_text_encoder=device.type != "cpu",
        accelerate=getattr(args, "accelerate", "none"),  # serve has no --accelerate
        overlap=False if getattr(args, "no_overlap", False) else None,
    )
    optional = dict(
        sink_frames=args.sink_frames,
        window_frames=args.window_frames,
        chunk_frames=args.chunk_frames,
        alpha=args.alpha,
        fps=args.fps,
        height=args.height,
        width=args.width,
    )
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if given:
        if args.random_model:
            raise ValueError("--random-model and --checkpoint exclude each other")
        return StreamingPipeline.from_pretrained(args.checkpoint, args.text_encoder, args.vae, device=device, **kwargs)
    if not args.random_model:
        if default_model.available():
            return StreamingPipeline.default(device=device, **kwargs)
        print(
            f"{PROG}: warning: no embedded default model in this install yet ({default_model.WEIGHTS}"
            " is written by scripts/export_world_student.py)",
            file=sys.stderr,
        )
    print(f"{PROG}: warning: using a tiny RANDOM model; the video will not follow the prompt", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return StreamingPipeline.tiny_random(device=device, **kwargs)


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _serve(args) -> int:
    try:
        if not 0 < args.port < 65536:
            raise ValueError(f"--port must be in [1, 65535], got {args.port}")
        if args.max_streams < 1:
            raise ValueError(f"--max-streams must be >= 1, got {args.max_streams}")
        from .models.wan_config import WAN_TINY
        from .server import serve

        pipe = _pipeline(args)
    except Exception as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: warning: binding {args.host}: other machines can reach the demo", file=sys.stderr)
    note = None if pipe.model.config != WAN_TINY else "tiny RANDOM model: the video will not follow the prompt"
    try:
        serve(
            pipe,
            host=args.host,
            port=args.port,
            max_streams=args.max_streams,
            recordings_dir=args.recordings_dir,
            note=note,
            extra_hosts=args.allowed_host,
        )
    except OSError as e:  # e.g. the port is taken
        print(f"{PROG}: error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    return 0


def _eval(args) -> int:
    from .eval import evaluate_frames, write_report
    from .video_io import VideoFrames
    from .world import parse_prompt

    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
        if args.prompt is not None:
            parse_prompt(args.prompt)  # a world prompt, or a one-line error before any decoding
        names = [p.name for p in args.videos]
        names = [n if names.count(n) == 1 else str(p) for n, p in zip(names, args.videos)]
        results = {}
        for name, path in zip(names, args.videos):
            video = VideoFrames(path)  # decoded twice, frame by frame: bounded memory
            try:
                results[name] = evaluate_frames(lambda: iter(video), args.prompt, fps=video.fps)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        paths = write_report(results, args.out, title=args.title)
    except Exception as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    for name, r in results.items():
        s = r["summary"]
        extra = f", adherence {s['adherence']:.3f}" if "adherence" in s else ""
        print(
            f"{name}: {r['frames']} frames, dynamic degree {s['dynamic_degree']:.0f}, "
            f"frame copying {s['frame_copying']:.3f}, drift {s['drift']:.3f}{extra}"
        )
    print(f"{PROG}: wrote {paths['markdown']}, {paths['json'].name} and plots", file=sys.stderr)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)  # exits with status 2 on bad options
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each, as the CLI's own warnings
        return _main(args)


def _main(args) -> int:
    if args.command == "serve":
        return _serve(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "train":
        from .train.run import run

        return run(args.config, args.stage, progress=not args.no_progress, overrides=args.set)
    from .files import exit_on_signals, output_target

    try:
        output_target(args.out)  # a regular file (or a link to one) in an existing folder
        switches = _read_prompts(args.prompts) if args.prompts is not None else None
        pipe = _pipeline(args)
        frame_rate(pipe.fps)
        chunks = pipe.stream(args.prompt, args.seconds, seed=args.seed, prompts=switches)
    except Exception as e:  # everything up to here reads the user's arguments and files
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2

    import av
    from tqdm import tqdm

    try:
        with exit_on_signals(), tqdm(total=pipe.end_frame, unit="frame", desc="generating", dynamic_ncols=True) as bar:
            frames = write_mp4(args.out, chunks, fps=pipe.fps, width=pipe.width, height=pipe.height, progress=bar)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.out} not written", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM / SIGHUP (files.exit_on_signals)
        print(f"{PROG}: terminated by a signal; {args.out} not written", file=sys.stderr)
        return e.code if isinstance(e.code, int) else 1
    except (OSError, av.FFmpegError) as e:  # e.g. the disk is full: the .part is removed
        print(f"{PROG}: error: cannot write {args.out}: {_one_line(e)}", file=sys.stderr)
        return 2
    print(
        f"{PROG}: wrote {frames} frames ({frames / pipe.fps:.2f} s at {pipe.fps:g} fps, "
        f"{pipe.width}x{pipe.height}) to {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
