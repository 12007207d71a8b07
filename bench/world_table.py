"""The README's world table (issue 8): long streams of held-out world prompts from each trained
student (ODE init, DMD, Re-DMD, tilted critic) under each sink setting (frozen, the published EMA
with a float32 and a bfloat16 sink, an alpha chosen by half-life), scored with docs/design.md §8's metrics
and the world's ground truth; the bidirectional teacher on its own 2-s clips for adherence only.

    python bench/world_table.py                      # 60-s streams, 4 held-out prompts
    python bench/world_table.py --seconds 10 --prompts 2   # a quick look

Writes bench/results/world-table.{md,json,png}. Checkpoints default to the runs of
configs/world-*.yaml (the newest checkpoint of each ``runs/world-*`` folder); ``--exports DIR``
reads the default-model files ``DIR/world-<run>.safetensors`` that scripts/train_world_gpu.sh
returns instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from reward_forcing.eval import evaluate_video
from reward_forcing.models import default as default_model
from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.pixel_codec import PixelCodec
from reward_forcing.models.text_encoder import MiniLMTextEncoder
from reward_forcing.pipelines import StreamingPipeline
from reward_forcing.scheduler import FewStepFlowSchedule
from reward_forcing.train.checkpoints import latest_checkpoint
from reward_forcing.world import sample_scene
from reward_forcing.train.world_probe import sample_videos

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = {
    "ODE init": "world-ode-init",
    "DMD (beta=0)": "world-dmd",
    "Re-DMD (beta=2, published)": "world-redmd",
    "tilted critic (beta=2)": "world-tilted",
}
HALF_LIFE = 8.0  # chunks (4 s of video): the sink forgets the stream's start within a minute
SINKS = {
    "frozen (alpha=1)": dict(alpha=1.0),
    "EMA 0.999, fp32 sink": dict(alpha=0.999),
    "EMA 0.999, bf16 sink": dict(alpha=0.999, sink_dtype=torch.bfloat16),
    f"half-life {HALF_LIFE:g} chunks (alpha={2 ** (-1 / HALF_LIFE):.3f})": dict(alpha=2 ** (-1 / HALF_LIFE)),
}
GEOMETRY = dict(height=64, width=64, fps=16.0, sink_frames=2, window_frames=4, chunk_frames=2)
SCHEDULE = FewStepFlowSchedule((1000.0, 750.0, 500.0, 250.0), shift=3.0)
KEYS = (
    "dynamic_degree",
    "frame_copying",
    "drift",
    "flicker",
    "found",
    "colour_right",
    "shape_right",
    "direction_right",
    "keeps_moving",
    "adherence",
)


def held_out_prompts(n: int, seed: int = 1234) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split="test").prompt for _ in range(n)]


def score_student(name: str, ckpt: Path, prompts, seconds: float, threads: int = 1) -> dict:
    """One student under every sink setting: ``{"name | sink": mean scores}`` (runs in a worker)."""
    torch.set_num_threads(threads)
    text = MiniLMTextEncoder.from_pretrained(text_len=32)
    model, settings = _student(ckpt)
    rows = {}
    for sink, kwargs in SINKS.items():
        pipe = StreamingPipeline(model, PixelCodec(), text, **(settings | kwargs))
        start, scores = time.perf_counter(), []
        for i, prompt in enumerate(prompts):
            video = pipe.generate(prompt, seconds, seed=i)
            scores.append(evaluate_video(video, prompt, fps=settings["fps"])["summary"])
        row = rows[f"{name} | {sink}"] = _mean(scores) | {"seconds": time.perf_counter() - start}
        print(f"{name} | {sink}: " + ", ".join(f"{k} {row[k]:.3f}" for k in KEYS), flush=True)
    return rows


def score_students(runs: dict[str, Path], prompts, seconds: float, jobs: int) -> dict:
    """Every student, ``jobs`` at a time in worker processes of one thread each."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(score_student, name, ckpt, prompts, seconds) for name, ckpt in runs.items()]
        return {k: v for f in futures for k, v in f.result().items()}


def score_teacher(ckpt: Path, prompts, text) -> dict:
    """The bidirectional teacher on its own clip length (8 latent frames = 2 s), 16-step CFG."""
    videos = sample_videos(_load(ckpt), text, PixelCodec(), prompts, (0,), steps=16)
    return _mean([evaluate_video(v, p)["summary"] for v, p in zip(videos, prompts)])


def _student(path: Path):
    """(model, StreamingPipeline settings): an export's own recorded ones, else the world configs'
    (GEOMETRY, SCHEDULE) for a trainer checkpoint."""
    if path.suffix != ".safetensors":
        return _load(path), GEOMETRY | {"schedule": SCHEDULE}
    model, settings = default_model.load(path)
    return model, default_model.pipeline_kwargs(settings)


def _load(path: Path):
    """A trainer checkpoint, or a default-model file (config in its metadata)."""
    if path.suffix == ".safetensors":
        return default_model.load(path)[0]
    return load_causal_wan(path, dtype=torch.float32).eval()


def _mean(scores: list[dict]) -> dict:
    return {k: float(np.mean([s[k] for s in scores])) for k in KEYS}


def write(rows: dict, out: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# World table: {meta['seconds']:g}-s streams of {len(meta['prompts'])} held-out prompts",
        "",
        "Dynamic degree, found, colour/direction right, keeps moving and adherence in % "
        "(higher is better); frame copying (lower is better), drift and flicker (lower is better).",
        "",
        "| model | sink | dynamic degree | frame copying | drift | flicker | found | colour | "
        "direction | keeps moving | adherence |",
        "|---" * 11 + "|",
    ]
    for name, r in rows.items():
        model, _, sink = name.partition(" | ")
        pct = lambda k: f"{100 * r[k]:.0f}"  # noqa: E731
        lines.append(
            f"| {model} | {sink or '-'} | {pct('dynamic_degree')} | {r['frame_copying']:.3f} | "
            f"{r['drift']:.3f} | {r['flicker']:.2f} | {pct('found')} | {pct('colour_right')} | "
            f"{pct('direction_right')} | {pct('keeps_moving')} | {pct('adherence')} |"
        )
    lines += ["", "Prompts:", *[f"- {p}" for p in meta["prompts"]], ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(names) + 1.5), sharey=True)
    for ax, key in zip(axes, ("dynamic_degree", "frame_copying", "adherence")):
        ax.barh(range(len(names)), [rows[n][key] for n in names])
        ax.set_title(key)
    axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--prompts", type=int, default=4, help="number of held-out prompts")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--exports", type=Path, help="folder of world-<run>.safetensors files")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "world-table")
    args = parser.parse_args()
    prompts = held_out_prompts(args.prompts)
    text = MiniLMTextEncoder.from_pretrained(text_len=32)

    def find(folder: str) -> Path | None:
        if args.exports is not None:
            path = args.exports / f"{folder}.safetensors"
            return path if path.is_file() else None
        return latest_checkpoint(args.runs / folder)

    runs = {name: find(folder) for name, folder in STUDENTS.items()}
    missing = [name for name, ckpt in runs.items() if ckpt is None]
    if missing:
        print(f"skipping (nothing in {args.exports or args.runs}): " + ", ".join(missing))
    rows = score_students({k: v for k, v in runs.items() if v is not None}, prompts, args.seconds, args.jobs)
    teacher = find("world-teacher")
    if teacher is not None:
        rows["teacher (bidirectional, 2-s clips)"] = score_teacher(teacher, prompts, text)
    meta = {
        "seconds": args.seconds,
        "prompts": prompts,
        "geometry": GEOMETRY,
        "checkpoints": {k: str(v) for k, v in runs.items()},
        "teacher": str(teacher),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    write(rows, args.out, meta)
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
