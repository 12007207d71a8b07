"""One import direction through the package, checked on the source (every import counts: module
level, function-local and under ``TYPE_CHECKING``).

A module may import modules of its own package (``models.loading`` -> ``models.causal_wan``) and
of any *lower* layer; never a higher layer, never another package of its own layer, never a
``__main__`` script module. ``eval`` and ``world`` sit below the cache, so they cannot reach a
model, a pipeline or a trainer.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "reward_forcing"

# lowest first; each name is a top-level module or subpackage of reward_forcing
LAYERS = [
    ("_extension", "_build_info"),  # the compiled ops, loaded for the running torch
    ("rope", "scheduler", "files", "world"),  # formulas, leaf utilities (torch/numpy only)
    ("reference", "eval", "video_io"),  # pure-PyTorch ops; video metrics; video files
    ("ops", "fused"),  # the op contract, every backend; fused norms
    ("cache",),  # the EMA-Sink + window K/V cache
    ("functional", "models"),  # the whole-stream function; networks, loaders
    ("pipelines", "train"),  # streaming inference; training stages
    ("server",),  # the browser demo
    ("cli", "__main__", "__init__"),  # entry points; the package's public names
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# Known exceptions, to be removed, never added to: (importer, imported).
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every reward_forcing module ``path`` imports, as names relative to the package."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" and name != "__init__" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "reward_forcing":
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module:
                found.add(".".join(target))
            else:  # from . import x / from .. import y
                found |= {".".join(target + [a.name]) for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("reward_forcing.")}
    return {f for f in found if f}


def top(name: str) -> str:
    return name.split(".")[0]


def all_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    missing = sorted({top(module_name(p)) for p in all_modules()} - set(LAYER))
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_imports_go_down_the_layers():
    bad = []
    for path in all_modules():
        me = module_name(path)
        for other in sorted(imports(path)):
            if (me, other) in ALLOWED:
                continue
            if other.split(".")[-1] == "__main__":
                bad.append(f"{me} -> {other} (a script module)")
            elif top(other) == top(me):
                continue
            elif LAYER[top(other)] > LAYER[top(me)]:
                bad.append(f"{me} -> {other} (up: layer {LAYER[top(other)]} from {LAYER[top(me)]})")
            elif LAYER[top(other)] == LAYER[top(me)]:
                bad.append(f"{me} -> {other} (sideways within layer {LAYER[top(me)]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_allow_list_has_no_stale_entry():
    used = {(module_name(p), o) for p in all_modules() for o in imports(p)}
    assert ALLOWED <= used, f"remove from ALLOWED: {sorted(ALLOWED - used)}"


def test_the_checker_sees_local_and_type_checking_imports(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    src = tmp_path / "models" / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..pipelines import x\n"
        "def f():\n    from ..cache import y\n    import reward_forcing.train.rollout\n"
        "    from . import loading\n"
    )
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
    assert imports(src) == {"pipelines", "cache", "train.rollout", "models.loading"}
