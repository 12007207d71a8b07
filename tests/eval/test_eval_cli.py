"""``reward-forcing eval``: decodes mp4s, scores them (with a world prompt, against its ground
truth) and writes the markdown + JSON + PNG report; bad paths or videos give one line, status 2."""

import json

import numpy as np
import pytest

pytest.importorskip("av")

from reward_forcing.cli import main  # noqa: E402
from reward_forcing.video_io import write_mp4  # noqa: E402
from reward_forcing.world import render, sample_scene  # noqa: E402


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A rendered world scene (moving) and the same scene frozen on its first frame, as mp4s."""
    folder = tmp_path_factory.mktemp("videos")
    scene = sample_scene(3, n_objects=1)
    video, _ = render(scene, 40)
    moving, frozen = folder / "moving.mp4", folder / "frozen.mp4"
    for path, frames in ((moving, video), (frozen, np.repeat(video[:1], 40, axis=0))):
        write_mp4(path, [frames], fps=16, width=scene.width, height=scene.height)
    return scene, moving, frozen


def test_eval_writes_report(tmp_path, videos, capsys):
    scene, moving, frozen = videos
    out = tmp_path / "report"
    assert main(["eval", str(moving), str(frozen), "--prompt", scene.prompt, "--out", str(out)]) == 0
    for name in ("report.md", "results.json", "summary.png", "motion.png", "frame_copying.png"):
        assert (out / name).is_file(), name
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    s_moving, s_frozen = data["summary"]["moving.mp4"], data["summary"]["frozen.mp4"]
    assert s_moving["dynamic_degree"] == 1.0 and s_frozen["dynamic_degree"] == 0.0
    assert s_moving["adherence"] > 0.8  # H.264 keeps the world's colours and motion
    assert s_frozen["keeps_moving"] == 0.0
    # codec noise on the frozen video must read as copying its start, the motion as leaving it
    assert s_frozen["frame_copying"] > 0.9 and s_moving["frame_copying"] < 0.1
    assert {"frame_copying", "drift", "flicker"} <= s_moving.keys()
    video = data["videos"]["moving.mp4"][0]
    assert video["frames"] == 40 and video["fps"] == 16.0
    assert "moving.mp4" in (out / "report.md").read_text()
    assert "adherence" in capsys.readouterr().out


def test_eval_without_prompt(tmp_path, videos):
    _, moving, _ = videos
    assert main(["eval", str(moving), "--out", str(tmp_path / "r")]) == 0
    summary = json.loads((tmp_path / "r" / "results.json").read_text())["summary"]["moving.mp4"]
    assert "dynamic_degree" in summary and "adherence" not in summary


def test_eval_bad_inputs_exit_2(tmp_path, videos, capsys):
    _, moving, _ = videos
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        ([str(tmp_path / "missing.mp4")], "does not exist"),
        ([str(not_video)], "not a readable video"),
        ([str(moving), "--prompt", "a cat playing piano"], "not a world prompt"),
        ([str(moving), "--out", str(a_file)], "not a folder"),
    ]
    for args, message in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "out")]
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written on error
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--out", str(tmp_path / "out")])  # no video
    assert exit_info.value.code == 2
