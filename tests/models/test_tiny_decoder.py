"""The light TAEHV-architecture decoder: checkpoint layout (key names and shapes of taew2_1),
strict loading from .pth and .safetensors, chunked decode == whole-clip decode, state resume,
and the pipeline picking it up. Random weights throughout (the real file is not available)."""

import numpy as np
import pytest
import torch
from reward_forcing.models.tiny_decoder import (
    StreamingTinyDecoder,
    TinyDecoder,
    is_tiny_decoder_checkpoint,
    load_tiny_decoder,
)
from safetensors.torch import save_file

# Every decoder key of a taew2_1 checkpoint (madebyollin/taehv, taehv.py's decoder layout).
MEM = [(3, 256), (4, 256), (5, 256), (9, 128), (10, 128), (11, 128), (15, 64), (16, 64), (17, 64)]
LAYOUT = {
    "decoder.1.weight": (256, 16, 3, 3),
    "decoder.1.bias": (256,),
    "decoder.7.conv.weight": (256, 256, 1, 1),
    "decoder.8.weight": (128, 256, 3, 3),
    "decoder.13.conv.weight": (256, 128, 1, 1),
    "decoder.14.weight": (64, 128, 3, 3),
    "decoder.19.conv.weight": (128, 64, 1, 1),
    "decoder.20.weight": (64, 64, 3, 3),
    "decoder.22.weight": (3, 64, 3, 3),
    "decoder.22.bias": (3,),
}
for i, n in MEM:
    LAYOUT |= {
        f"decoder.{i}.conv.0.weight": (n, 2 * n, 3, 3),
        f"decoder.{i}.conv.0.bias": (n,),
        f"decoder.{i}.conv.2.weight": (n, n, 3, 3),
        f"decoder.{i}.conv.2.bias": (n,),
        f"decoder.{i}.conv.4.weight": (n, n, 3, 3),
        f"decoder.{i}.conv.4.bias": (n,),
    }


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(3)
    model = TinyDecoder().double().eval()
    with torch.no_grad():  # larger weights than the default init: the ReLUs and the tanh clamp bite
        for p in model.parameters():
            p.mul_(1.5)
    return model


def test_checkpoint_layout():
    state = TinyDecoder().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == LAYOUT


def test_chunked_decode_equals_whole_clip(decoder):
    """float64: chunks of 3, and uneven chunks 1 + 2 + 4, give the whole clip's frames (same
    convolutions on the same inputs: round-off only)."""
    z = torch.randn(1, 16, 7, 3, 5, dtype=torch.float64)
    whole = decoder(z)
    assert whole.shape == (1, 3, 1 + 4 * 6, 24, 40)
    assert whole.min() >= -1 and whole.max() <= 1 and whole.std() > 0.01
    for sizes in ((3, 3, 1), (1, 2, 4)):
        stream = StreamingTinyDecoder(decoder)
        chunks = [stream.decode(c) for c in z.split(sizes, dim=2)]
        assert [c.shape[2] for c in chunks] == [4 * sizes[0] - 3] + [4 * s for s in sizes[1:]]
        torch.testing.assert_close(torch.cat(chunks, 2), whole, rtol=0, atol=1e-12)
    # without the carried state every chunk would restart: a different second chunk
    fresh = StreamingTinyDecoder(decoder)
    fresh.decode(z[:, :, :3])
    restarted = StreamingTinyDecoder(decoder).decode(z[:, :, 3:6])
    assert not torch.allclose(fresh.decode(z[:, :, 3:6])[:, :, 3:], restarted, atol=1e-3)
    assert [fresh.frames_for(3, first) for first in (True, False)] == [9, 12]
    assert (fresh.spatial_scale, fresh.temporal_scale) == (8, 4)


def test_state_dict_resumes(decoder):
    z = torch.randn(1, 16, 6, 2, 3, dtype=torch.float64)
    stream = StreamingTinyDecoder(decoder)
    stream.decode(z[:, :, :3])
    saved = stream.state_dict()
    expected = stream.decode(z[:, :, 3:])
    other = StreamingTinyDecoder(decoder)
    other.load_state_dict(saved)
    assert torch.equal(other.decode(z[:, :, 3:]), expected)
    with pytest.raises(ValueError, match="entries"):
        other.load_state_dict({"memory": [None], "to_trim": 0})


def _checkpoint(with_encoder=True, wide_tgrow=False):
    state = {k: torch.randn(s) for k, s in LAYOUT.items()}
    if wide_tgrow:  # some releases store the stride-1 TGrow with 2 x 256 output channels
        state["decoder.7.conv.weight"] = torch.randn(512, 256, 1, 1)
    if with_encoder:
        state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_strict(tmp_path, suffix):
    state = _checkpoint(wide_tgrow=True)
    path = tmp_path / f"taew2_1{suffix}"
    (save_file if suffix == ".safetensors" else lambda s, p: torch.save(s, p))(state, str(path))
    assert is_tiny_decoder_checkpoint(path)
    model = load_tiny_decoder(path)
    assert torch.equal(model.decoder[7].conv.weight, state["decoder.7.conv.weight"][256:])
    assert torch.equal(model.decoder[22].bias, state["decoder.22.bias"])
    assert model.decoder[1].weight.device.type == "cpu"

    bad = dict(state)
    del bad["decoder.14.weight"]
    bad["decoder.99.weight"] = torch.zeros(1)
    bad["decoder.20.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        load_tiny_decoder(tmp_path / "bad.pth")
    for name in ("decoder.14.weight", "decoder.99.weight", "decoder.20.weight", "bad.pth"):
        assert name in str(e.value)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    assert not is_tiny_decoder_checkpoint(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a TAEHV"):
        load_tiny_decoder(tmp_path / "other.pth")


def test_vae_option_recognises_the_file(tmp_path):
    from reward_forcing.models.pixel_codec import streaming_decoder
    from reward_forcing.models.vae import load_vae

    path = tmp_path / "taew2_1.safetensors"
    save_file(_checkpoint(with_encoder=False), str(path))
    model = load_vae(path, dtype=torch.float64)
    assert isinstance(model, TinyDecoder) and model.decoder[1].weight.dtype == torch.float64
    assert isinstance(streaming_decoder(model), StreamingTinyDecoder)


def test_pipeline_streams_with_the_light_decoder():
    """The pipeline with the tiny decoder: Wan's frame counts, frames equal to decoding the
    stream's latents in one go."""
    from reward_forcing.models.causal_wan import CausalWanModel
    from reward_forcing.models.text_encoder import HashedTextEncoder
    from reward_forcing.models.wan_config import WAN_TINY
    from reward_forcing.pipelines import StreamingPipeline
    from reward_forcing.pipelines.streaming import to_uint8_frames

    model = CausalWanModel(WAN_TINY)
    pipe = StreamingPipeline(
        model, TinyDecoder().eval(), HashedTextEncoder(WAN_TINY.text_dim, WAN_TINY.text_len), height=32, width=48
    )
    latents = []
    decode = pipe.decoder.decode
    pipe.decoder.decode = lambda x: (latents.append(x), decode(x))[1]
    it = pipe.stream("a red ball", None)
    frames = [next(it) for _ in range(3)]
    assert [len(f) for f in frames] == [9, 12, 12] and frames[0].shape[1:] == (32, 48, 3)
    whole = pipe.vae(torch.cat(latents, 2))
    np.testing.assert_array_equal(np.concatenate(frames), to_uint8_frames(whole))
