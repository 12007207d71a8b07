"""The streaming Wan VAE decoder: chunk-by-chunk decoding with the persistent temporal cache equals
one whole-clip ``AutoencoderKLWan.decode`` (of the un-normalised latents); save/restore of that
cache; loading from local folders."""
import pytest
import torch

pytest.importorskip("diffusers")

from reward_forcing.models.vae import StreamingVAEDecoder, load_wan_vae, tiny_random_wan_vae  # noqa: E402


@pytest.fixture(scope="module")
def vae():
    return tiny_random_wan_vae(seed=1)


def latents(frames=9, h=3, w=4):
    return torch.randn(1, 16, frames, h, w)


def unnormalised(vae, z):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return z * std + mean


def test_chunked_decoding_equals_whole_clip(vae):
    """Chunks of 3 latent frames. Same convolutions on the same inputs in the same order, so
    the tolerance is float32 round-off (1e-6; bitwise in practice on CPU)."""
    z = latents()
    with torch.no_grad():
        whole = vae.decode(unnormalised(vae, z)).sample
    decoder = StreamingVAEDecoder(vae)
    chunks = [decoder.decode(c) for c in z.split(3, dim=2)]
    assert [c.shape[2] for c in chunks] == [9, 12, 12]  # 1 + 4 * 2, then 4 per latent frame
    assert whole.shape == (1, 3, 33, 24, 32)
    torch.testing.assert_close(torch.cat(chunks, 2), whole, rtol=0, atol=1e-6)
    # what diffusers' decode gives per chunk: a new "first frame" each time (9 frames, a seam)
    with torch.no_grad():
        assert vae.decode(unnormalised(vae, z[:, :, 3:6])).sample.shape[2] == 9
    assert (decoder.spatial_scale, decoder.temporal_scale) == (8, 4)
    assert [decoder.frames_for(3, first) for first in (True, False)] == [9, 12]


def test_state_dict_resumes_the_stream(vae):
    z = latents()
    decoder = StreamingVAEDecoder(vae)
    decoder.decode(z[:, :, :3])
    saved = decoder.state_dict()
    expected = decoder.decode(z[:, :, 3:6])
    fresh = StreamingVAEDecoder(vae)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.decode(z[:, :, 3:6]), expected)
    decoder.reset()  # a new stream starts with a first frame again
    assert decoder.decode(z[:, :, :3]).shape[2] == 9


def test_load_from_local_folders(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    for path in (tmp_path / "vae", tmp_path):  # the VAE folder, or a pipeline folder holding vae/
        loaded = load_wan_vae(path)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_wan_vae(tmp_path / "missing")
