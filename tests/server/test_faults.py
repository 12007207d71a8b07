"""The server fault test (bench/serve_load.py --faults): 200 loopback clients that connect, start
and vanish in every way, plus slow readers, against ``reward-forcing serve``: under 60 s, no
active stream left, no ``.part`` file left, RSS within +10 % of its value after a warm-up wave."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("websockets")

BENCH = Path(__file__).parents[2] / "bench" / "serve_load.py"


@pytest.mark.slow
def test_two_hundred_vanishing_clients(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--clients",
            "0",
            "--slow",
            "0",
            "--faults",
            "200",
            "--wave",
            "50",
            "--max-streams",
            "4",
            "--height",
            "32",
            "--width",
            "48",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    faults = json.loads((tmp_path / "serve-faults.json").read_text())["faults"]
    print(json.dumps(faults))
    assert faults["wall_s"] < 60
    assert faults["active_streams_after"] == 0 and faults["part_files_left"] == []
    assert faults["rss_growth"] < 0.10
