"""All metrics of one video in one call: the per-video record that report.write_report takes."""
from __future__ import annotations

from .metrics import as_video, drift, dynamic_degree, flicker, frame_copying, optical_flow
from .world_scores import world_scores


def evaluate_video(video, prompt=None, *, fps: float = 16.0, ref_frames: int = 4,
                   segment: float = 0.25) -> dict:
    """All metrics of one video (flow computed once). prompt: a world prompt (text or PromptSpec)
    to add the ground-truth world scores. Returns {"summary": scalars, "series": per-frame or
    per-pair curves, "fps", "frames", "threshold"} — the input of report.write_report."""
    x = as_video(video)
    flow = optical_flow(x)
    dyn = dynamic_degree(flow=flow)
    copy = frame_copying(x, ref_frames, segment)
    dr = drift(x, segment)
    fl = flicker(x, flow, optical_flow(x, backward=True))
    summary = {"dynamic_degree": float(dyn["dynamic"]), "moving_fraction": dyn["moving_fraction"],
               "frame_copying": copy["late_mean"], "drift": dr["drift"], "flicker": fl["mean"],
               **{f"{k}_change": v for k, v in dr["change"].items()}}
    result = {"summary": summary, "fps": fps, "frames": len(x), "threshold": dyn["threshold"],
              "series": {"flow_score": dyn["pair_score"], "frame_copying": copy["per_frame"],
                         "flicker": fl["per_pair"], **dr["stats"]}}
    if prompt is not None:
        world = world_scores(x, prompt, fps=fps, segment=segment)
        summary.update({k: world[k] for k in ("found", "colour_right", "direction_right",
                                              "keeps_moving", "background_right", "adherence")})
        result["world"] = world
    return result
