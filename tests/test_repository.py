"""The repository stands on its own: nothing it tracks points outside it, and the committed
training state follows the rules of training/README.md (float16 weights, size caps)."""

import json
import re
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_reference_to_files_outside_the_repository():
    outside = re.compile(r"\.\./shared|/work/shared|DESIGN\.md|DESIGN §")
    hits = []
    for path in tracked_files():
        if (
            path.suffix in (".png", ".safetensors", ".pt", ".jsonl")
            or not path.is_file()
            or path == Path(__file__).resolve()
        ):
            continue
        text = path.read_text(errors="replace")
        hits += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not hits, "references to files outside the repository: " + ", ".join(hits)


def test_design_sections_cited_in_the_code_exist():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "design.md").read_text(), flags=re.M))
    cited = set()
    for path in tracked_files():
        if path.suffix in (".py", ".h", ".cpp", ".cu", ".cuh", ".sh", ".yaml", ".cmake", ".txt", ".md"):
            cited |= set(re.findall(r"docs/design\.md §(\d+)", path.read_text(errors="replace")))
    assert cited and cited <= sections, f"cited sections missing from docs/design.md: {cited - sections}"


def safetensors_dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_committed_training_state_is_float16_and_size_capped():
    folder = ROOT / "training"
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert runs, "training/ has no run folder"
    total = 0
    for run in runs:
        files = [p for p in run.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        total += size
        assert size <= 16 * MiB, f"{run.name}: {size / MiB:.1f} MiB > 16 MiB"
        weights = [p for p in files if p.suffix == ".safetensors"]
        assert len(weights) <= 1, f"{run.name}: keep only the newest weights, found {weights}"
        for p in weights:
            assert safetensors_dtypes(p) == {"F16"}, f"{p}: not float16"
        assert not [p for p in files if p.suffix in (".pt", ".pth", ".ckpt")], f"{run.name}: no optimizer state"
    assert total <= 32 * MiB
