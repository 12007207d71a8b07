"""bench/world_ablation.py's kill rule: an arm stops only when it is the worst of its round (and clip
length) at noise 0.8 and 0.95, by more than the evaluations' own noise."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "world_ablation", Path(__file__).resolve().parent.parent / "bench" / "world_ablation.py"
)
ablation = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ablation)


def _rows(at_08: list[float], at_095: list[float]) -> list[dict]:
    """Evaluations every 5 CPU-minutes ending at 45."""
    start = 2700 - 300 * (len(at_08) - 1)
    return [
        {"cpu_seconds": start + 300 * i, "x0": {"0.8": {"object": a}, "0.95": {"object": b}}}
        for i, (a, b) in enumerate(zip(at_08, at_095))
    ]


def _kill(rows: dict) -> set:
    return ablation._kill_rule(rows, {a: r[-1] for a, r in rows.items()})


def test_kill_rule_needs_the_worst_error_at_both_levels_beyond_the_noise():
    steady = _rows([0.044, 0.044, 0.044, 0.044], [0.26, 0.26, 0.26, 0.26])
    assert _kill({"a": steady, "bad": _rows([0.05] * 4, [0.30] * 4)}) == {"bad"}
    # worst at 0.8 only (the rule of rounds 1-4 would have stopped it)
    assert _kill({"a": steady, "b": _rows([0.05] * 4, [0.25] * 4)}) == set()
    # worst at both, but by less than the eval-to-eval changes of a compared arm
    noisy = _rows([0.044, 0.046, 0.043, 0.045], [0.26, 0.28, 0.25, 0.27])
    assert _kill({"a": noisy, "b": _rows([0.0455] * 4, [0.271] * 4)}) == set()


def test_the_kill_rule_compares_arms_of_one_round_and_clip_length():
    assert ablation._round("v10-layout2") == (10, 2) and ablation._round("v10-layout8") == (10, 8)
    assert ablation._round("v3-cosine") == ablation._round("v3-constant") == (3, 8)
    assert ablation._round("baseline") == (1, 8)
