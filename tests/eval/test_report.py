import json

import numpy as np
import pytest

from reward_forcing.eval import evaluate_video, write_report
from reward_forcing.world import render, sample_scene


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(31)
    moving, frozen = [], []
    for _ in range(2):
        scene = sample_scene(rng)
        video, _ = render(scene, 32)
        moving.append(evaluate_video(video, scene.prompt))
        video[16:] = video[:1]
        frozen.append(evaluate_video(video, scene.prompt))
    one = sample_scene(rng)
    return {"moving": moving, "copies its start": frozen, "one video, no prompt": evaluate_video(render(one, 20)[0])}


def test_write_report(tmp_path, results):
    paths = write_report(results, tmp_path / "out", title="World check")
    for key in ("summary", "motion", "frame_copying", "flicker", "drift"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads(paths["json"].read_text())
    assert data["summary"]["moving"]["videos"] == 2
    expected = np.mean([r["summary"]["frame_copying"] for r in results["copies its start"]])
    assert data["summary"]["copies its start"]["frame_copying"] == pytest.approx(expected)
    assert data["summary"]["copies its start"]["keeps_moving"] == 0.0
    assert "found" not in data["summary"]["one video, no prompt"]
    assert len(data["videos"]["moving"][0]["series"]["frame_copying"]) == 32

    md = paths["markdown"].read_text()
    assert md.startswith("# World check")
    for name in results:
        assert f"| {name} |" in md
    row = next(line for line in md.splitlines() if line.startswith("| one video"))
    assert row.endswith("|  |  |  |  |  |  |")  # no world columns for it
    assert "![motion](motion.png)" in md


def test_empty_results_are_an_error(tmp_path):
    with pytest.raises(ValueError):
        write_report({}, tmp_path)
