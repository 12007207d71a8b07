"""bench/world_place_toy.py's score and oracle: the cells metric counts the prompted cells, the oracle
tokens carry what the prompt says."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from reward_forcing.world import PLACES, parse_prompt, sample_scene, with_places

SPEC = importlib.util.spec_from_file_location(
    "world_place_toy", Path(__file__).resolve().parent.parent / "bench" / "world_place_toy.py"
)
toy = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(toy)


def _video_with_mass_in(cells: list[int]) -> torch.Tensor:
    video = torch.full((1, 3, 4, 63, 63), -1.0)
    for c in cells:
        row, col = divmod(c, 3)
        video[..., row * 21 + 5 : row * 21 + 16, col * 21 + 5 : col * 21 + 16] = 1.0
    return video


def test_cell_hits_counts_the_prompted_cells_among_the_heaviest():
    black = torch.full((1, 3), -1.0)
    assert float(toy.cell_hits(_video_with_mass_in([0]), black, [[0]])) == 1.0
    assert float(toy.cell_hits(_video_with_mass_in([8]), black, [[0]])) == 0.0
    assert float(toy.cell_hits(_video_with_mass_in([2, 6]), black, [[2, 7]])) == 0.5
    # the same error everywhere (a wrong background) changes nothing
    assert float(toy.cell_hits(_video_with_mass_in([4]) + 0.1, black, [[4]])) == 1.0


def test_oracle_tokens_hold_each_objects_place_colour_and_shape():
    rng = np.random.default_rng(0)
    scenes = [with_places(sample_scene(rng), rng) for _ in range(20)]
    states = toy.oracle_states([s.prompt for s in scenes])
    assert states.shape == (20, toy.TEXT_LEN, 384)
    for scene, tokens in zip(scenes, states):
        spec = parse_prompt(scene.prompt)
        for i, obj in enumerate(spec.objects):
            assert int(tokens[i, :9].argmax()) == list(PLACES).index(obj.place)
            assert toy.prompted_cells(scene.prompt)[i] == PLACES[obj.place][1] * 3 + PLACES[obj.place][0]
        assert not tokens[len(spec.objects) + 1 :].any()  # zero padding after the background token


def test_token_mlp_draws_one_latent_frame_and_sees_the_position():
    mlp = toy.TokenMLP()
    out = mlp(toy.oracle_states(["a red ball in the top left moving right on a black background"]))
    assert out.shape == (1, 192, 1, 16, 16)
    assert out[0, :, 0, :2, :2].sub(out[0, :, 0, -2:, -2:]).abs().max() > 0  # not the same in every token
