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


# --- Wan's own VAE checkpoint (Wan2.1_VAE.pth) -------------------------------------------------------

_RESIDUAL = {
    "norm1.gamma": "residual.0.gamma",
    "conv1": "residual.2",
    "norm2.gamma": "residual.3.gamma",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def to_wan_layout(state: dict) -> dict:
    """diffusers ``AutoencoderKLWan`` keys -> Wan's original ones (wan/modules/vae.py): flat
    ``downsamples``/``upsamples`` lists (4 per decoder level: 3 residual blocks, then the
    resample), ``middle.{0,1,2}``, ``head.{0,2}``, ``conv1``/``conv2`` for the quant convs."""
    import re

    def residual(rest):
        for a, b in _RESIDUAL.items():
            if rest == a or rest.startswith(a + "."):
                return b + rest[len(a) :]
        return rest

    out = {}
    for key, value in state.items():
        new = {"quant_conv": "conv1", "post_quant_conv": "conv2"}.get(key.split(".")[0])
        if new:
            out[new + key[key.index(".") :]] = value
            continue
        part, rest = key.split(".", 1)
        if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
            rest = f"middle.{2 * int(m[1])}.{residual(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
            rest = f"middle.1.{m[1]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest):
            rest = f"downsamples.{m[1]}.{residual(m[2])}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            rest = f"upsamples.{4 * int(m[1]) + int(m[2])}.{residual(m[3])}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
            rest = f"upsamples.{4 * int(m[1]) + 3}.{m[2]}"
        else:
            rest = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}[rest.split(".")[0]] + rest[
                rest.index(".") :
            ]
        out[f"{part}.{rest}"] = value
    return out


@pytest.fixture(scope="module")
def wan21_layout_vae():
    """The Wan2.1 VAE's layout (2 residual blocks per level, mid-block attention) at base width 8."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(2)
    return AutoencoderKLWan(base_dim=8, z_dim=16).eval()


def test_wan_vae_checkpoint_loads(wan21_layout_vae, tmp_path):
    """Wan2.1_VAE.pth (a file, or the release folder holding it) loads into the same VAE: every
    parameter equal, the same decoded frames; nothing left on the meta device."""
    vae = wan21_layout_vae
    wan = to_wan_layout(vae.state_dict())
    assert "decoder.upsamples.14.residual.6.weight" in wan and "decoder.middle.1.to_qkv.weight" in wan
    torch.save(wan, tmp_path / "Wan2.1_VAE.pth")
    z = latents(frames=3, h=2, w=2)
    for path in (tmp_path, tmp_path / "Wan2.1_VAE.pth"):
        loaded = load_wan_vae(path)
        assert loaded.state_dict().keys() == vae.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
        assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
        with torch.no_grad():
            torch.testing.assert_close(loaded.decode(z).sample, vae.decode(z).sample, rtol=0, atol=0)


def test_wan_vae_checkpoint_errors_name_the_problem(wan21_layout_vae, tmp_path):
    wan = to_wan_layout(wan21_layout_vae.state_dict())
    del wan["decoder.upsamples.5.residual.2.weight"]
    torch.save(wan, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(ValueError, match=r"missing keys.*up_blocks\.1\.resnets\.1\.conv1\.weight"):
        load_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a Wan VAE"):
        load_wan_vae(tmp_path / "other.pth")
