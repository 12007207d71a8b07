"""The default model's pixel codec: an exact space-to-depth rearrangement, usable as a streaming
decoder."""

import numpy as np
import pytest
import torch

from reward_forcing.models.pixel_codec import PixelCodec, streaming_decoder


def test_round_trip_is_exact_and_layout_is_documented():
    codec = PixelCodec(spatial=4, temporal=4)
    video = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 16, 24, 3), dtype=np.uint8))
    z = codec.encode(video)
    assert z.shape == (2, 192, 2, 4, 6) and codec.channels == 192
    assert z.min() >= -1 and z.max() <= 1
    # channel (frame t, colour c, dy p, dx q) of latent (f, h, w) is pixel (4f+t, 4h+p, 4w+q, c)
    t, c, p, q, f, h, w = 3, 1, 2, 0, 1, 2, 5
    channel = ((t * 3 + c) * 4 + p) * 4 + q
    assert z[1, channel, f, h, w] == video[1, 4 * f + t, 4 * h + p, 4 * w + q, c].float() / 255 * 2 - 1
    back = ((codec.decode(z) + 1) * 127.5).round().byte()  # [B, 3, F, H, W]
    assert torch.equal(back.permute(0, 2, 3, 4, 1), video)


def test_streaming_interface_and_chunked_decoding():
    codec = PixelCodec(spatial=2, temporal=2)
    assert streaming_decoder(codec) is codec
    z = torch.rand(1, codec.channels, 6, 3, 3) * 2 - 1
    whole = codec.decode(z)
    codec.reset()
    chunks = torch.cat([codec.decode(piece) for piece in z.split(2, 2)], 2)
    assert torch.equal(whole, chunks)
    assert codec.frames_for(3, first=True) == codec.frames_for(3, first=False) == 6
    assert codec.state_dict() == {}
    with pytest.raises(ValueError, match="no state"):
        codec.load_state_dict({"x": 1})


def test_bad_input():
    codec = PixelCodec()
    with pytest.raises(ValueError, match="multiples"):
        codec.encode(torch.zeros(1, 6, 64, 64, 3))
    with pytest.raises(ValueError, match=r"\[B, F, H, W, 3\]"):
        codec.encode(torch.zeros(6, 64, 64, 3))
    with pytest.raises(ValueError, match="192"):
        codec.decode(torch.zeros(1, 16, 2, 16, 16))
    with pytest.raises(ValueError, match=">= 1"):
        PixelCodec(spatial=0)
