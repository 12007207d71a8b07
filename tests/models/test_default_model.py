"""The embedded default model: file format (weights + config + streaming settings in one
safetensors file), strict loading, the default pipeline, and the shipped weights themselves."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reward_forcing.models import default as default_model
from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.loading import load_causal_wan
from reward_forcing.models.wan_config import WAN_WORLD
from reward_forcing.pipelines import StreamingPipeline

SETTINGS = dict(
    height=64,
    width=64,
    fps=16.0,
    sink_frames=2,
    window_frames=4,
    chunk_frames=2,
    alpha=0.999,
    steps=[1000.0, 750.0, 500.0, 250.0],
    shift=3.0,
)
shipped = pytest.mark.skipif(
    not default_model.available(), reason="the default model's weights are not in this install"
)


@pytest.fixture(scope="module")
def random_export(tmp_path_factory):
    torch.manual_seed(0)
    model = CausalWanModel(WAN_WORLD)
    path = default_model.export(
        model, SETTINGS, tmp_path_factory.mktemp("w") / "m.safetensors", provenance={"what": "random"}
    )
    return model, path


def test_export_and_load_round_trip(random_export):
    model, path = random_export
    meta = default_model.read_metadata(path)
    assert meta["config"] == WAN_WORLD and meta["settings"] == SETTINGS
    assert meta["provenance"] == {"what": "random"}
    loaded, settings = default_model.load(path)
    assert settings == SETTINGS and loaded.dtype == torch.float32
    # the generic loader (--checkpoint, from_pretrained) reads the recorded config too: x0 head
    assert load_causal_wan(path, dtype=torch.float32).config == WAN_WORLD
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.half().float(), b), k  # stored as float16


def test_bad_files(random_export, tmp_path):
    _, path = random_export
    with pytest.raises(ValueError, match="settings lack"):
        default_model.export(CausalWanModel(WAN_WORLD), {"height": 64}, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="not found"):
        default_model.load(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="not a default-model file"):
        default_model.load(plain)
    # a key missing from the weights: named in the error
    state = load_file(str(path))
    state.pop("head.head.weight")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=meta)
    with pytest.raises(ValueError, match="head.head.weight"):
        default_model.load(broken)


def test_default_pipeline_streams_the_settings(random_export):
    _, path = random_export
    pipe = StreamingPipeline.default(path=path)
    assert (pipe.height, pipe.width, pipe.fps, pipe.chunk_frames) == (64, 64, 16.0, 2)
    assert pipe.schedule.shift == 3.0 and pipe.cache.window_frames == 4
    video = pipe.generate("a red circle moving to the right on a black background", 1.0)
    assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
    assert StreamingPipeline.default(path=path, alpha=1.0, sink_frames=3).cache.sink_frames == 3


def test_default_pipeline_warns_about_words_it_was_not_trained_on(random_export, recwarn):
    from reward_forcing.pipelines import UnknownWordsWarning

    _, path = random_export
    pipe = StreamingPipeline.default(path=path)
    pipe.generate("a red circle moving to the right on a black background", 0.25)
    assert not [w for w in recwarn if w.category is UnknownWordsWarning]
    with pytest.warns(UnknownWordsWarning, match=r"word\(s\) dragon, flying in"):
        pipe.generate("A red dragon flying to the right on a black background, dragon", 0.25)
    with pytest.warns(UnknownWordsWarning, match="sunset"):  # a switch's prompt too, and a server's sibling
        pipe.sibling().generate(
            None, 0.5, prompts=[(0, "a red circle moving up on a black background"), (0.25, "sunset")]
        )


def test_default_pipeline_of_a_layout_model_places_the_prompt(tmp_path):
    """A layout model (WanConfig.layout) streams with its layout: a prompt that does not say where its
    objects start is placed and reworded (world.fill_places), the layout moves the stream's first
    chunk, and a KV re-cache of frames that no longer start the stream leaves it out."""
    from reward_forcing.world import LayoutTextEncoder, describe, fill_places, parse_prompt

    torch.manual_seed(0)
    model = CausalWanModel(dataclasses.replace(WAN_WORLD, layout=True))
    torch.nn.init.normal_(model.layout_embedding.weight, std=0.5)
    path = default_model.export(model, SETTINGS, tmp_path / "m.safetensors")
    pipe = StreamingPipeline.default(path=path, recache=True, sink_recache="reinit")
    prompt = "a red circle moving to the right on a black background"
    placed = describe(fill_places(parse_prompt(prompt)), 0)
    assert parse_prompt(placed).objects[0].place == "left"
    encoder = LayoutTextEncoder(lambda prompts: torch.zeros(len(prompts), 32, 384), 8, 8, place_unplaced=True)
    torch.testing.assert_close(encoder([prompt])[:, 32:], encoder([placed])[:, 32:])
    first = pipe.generate(prompt, 0.25, seed=1)
    with torch.no_grad():
        pipe.model.layout_embedding.weight.zero_()
    assert not np.array_equal(first, pipe.generate(prompt, 0.25, seed=1))
    layouts = []
    forward = pipe.forward_chunk
    pipe.forward_chunk = lambda x, t, text, cache, update_cache=False: (
        layouts.append(text.layout is not None) or forward(x, t, text, cache, update_cache=update_cache)
    )
    stream = pipe.stream(prompt)
    for _ in range(6):  # 2 + 4 frames kept: after 4 chunks of 2 frames, frames have left
        next(stream)
    layouts.clear()
    pipe.set_prompt("a blue square moving up on a white background", recache=True)
    assert layouts and not any(layouts)
    sketched = CausalWanModel(dataclasses.replace(WAN_WORLD, layout=True, layout_sketch=8))
    path = default_model.export(sketched, SETTINGS, tmp_path / "sketched.safetensors")
    assert StreamingPipeline.default(path=path).text_encoder.encoder.sketch_pixels == 8  # from the file's config


@shipped
def test_shipped_model_is_small_and_faster_than_real_time():
    assert default_model.WEIGHTS.stat().st_size <= 30e6
    pipe = StreamingPipeline.default()
    start = time.perf_counter()
    video = pipe.generate("a red circle moving to the right on a black background", 10.0)
    elapsed = time.perf_counter() - start
    assert video.shape == (160, 64, 64, 3)
    assert elapsed < 60, f"10 s of video took {elapsed:.1f} s"  # the bound


@shipped
@pytest.mark.slow
def test_shipped_model_follows_the_colour_of_the_prompt():
    """Most pixels that differ from the background are the prompted colour, for each of 3 colours."""
    from reward_forcing.world import COLOURS

    pipe = StreamingPipeline.default()
    for colour in ("red", "blue", "yellow"):
        video = pipe.generate(f"a large {colour} circle moving to the right on a black background", 3.0)
        pixels = video.reshape(-1, 3).astype(float)
        shape = pixels[pixels.max(1) > 80]  # not the black background
        names = list(COLOURS)
        nearest = np.argmin(((shape[:, None] - np.array(list(COLOURS.values()))[None]) ** 2).sum(-1), 1)
        assert len(shape) > 0 and np.mean(nearest == names.index(colour)) > 0.5, colour
