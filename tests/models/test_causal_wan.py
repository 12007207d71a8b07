"""CausalWanModel: equals diffusers' Wan on full attention; streaming through the cache is exactly
block-causal attention; the published S = W = C = 3 stream runs; prompt K/V reuse is exact."""

import dataclasses

import pytest
import torch

from reward_forcing.models import WAN_1_3B, WAN_14B, WAN_TINY, CausalWanModel, TextKV

TOKENS_H, TOKENS_W = 3, 4  # token grid of a frame; latents are twice that with Wan's 2x2 patches


def tiny_model(config=WAN_TINY):
    """Random weights, every parameter moved off its init (norm weights != 1, biases != 0) so that
    a wrong mapping of any of them shows."""
    model = CausalWanModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def latents(batch, frames, config=WAN_TINY):
    return torch.randn(batch, config.in_dim, frames, 2 * TOKENS_H, 2 * TOKENS_W)


def prompt(batch, config=WAN_TINY, length=None):
    return torch.randn(batch, length or config.text_len, config.text_dim)


def stream(model, x, t, text, cache, chunk_frames, update_cache=True):
    out = []
    for start in range(0, x.shape[2], chunk_frames):
        sl = slice(start, start + chunk_frames)
        tc = t[:, sl] if t.dim() == 2 else t
        out.append(model.forward_chunk(x[:, :, sl], tc, text, cache, update_cache=update_cache))
    return torch.cat(out, 2)


def test_configs_match_published_shapes():
    assert (WAN_1_3B.num_layers, WAN_1_3B.dim, WAN_1_3B.ffn_dim, WAN_1_3B.num_heads) == (30, 1536, 8960, 12)
    assert (WAN_14B.num_layers, WAN_14B.dim, WAN_14B.ffn_dim, WAN_14B.num_heads) == (40, 5120, 13824, 40)
    assert WAN_1_3B.head_dim == WAN_14B.head_dim == 128
    with torch.device("meta"):
        n = sum(p.numel() for p in CausalWanModel(WAN_1_3B).parameters())
    assert 1.40e9 < n < 1.45e9  # Wan2.1-T2V-1.3B has 1.42 B parameters
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(WAN_TINY, num_heads=3)
    assert WAN_1_3B.token_grid(60, 104) == (30, 52)  # 480x832 video: Wan's 1,560 tokens per latent frame
    with pytest.raises(ValueError, match="tile"):
        WAN_1_3B.token_grid(15, 16)
    assert dataclasses.replace(WAN_TINY, layout=True, layout_sketch=8).layout_sketch == 8
    for bad in (dict(layout_sketch=8), dict(layout=True, layout_sketch=-1), dict(layout=True, layout_sketch=True)):
        with pytest.raises(ValueError, match="layout_sketch"):
            dataclasses.replace(WAN_TINY, **bad)


@pytest.mark.parametrize(
    "config",
    [WAN_TINY, dataclasses.replace(WAN_TINY, cross_attn_norm=False)],
    ids=["cross_attn_norm", "no_cross_attn_norm"],
)
def test_full_attention_matches_diffusers(config):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ours = tiny_model(config)
    theirs = diffusers.WanTransformer3DModel(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.in_dim,
        out_channels=config.out_dim,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=config.cross_attn_norm,
        eps=config.eps,
    ).eval()
    # diffusers' own conversion of the original Wan names: checks our names independently of loading.py
    theirs.load_state_dict(convert_wan_transformer_to_diffusers(dict(ours.state_dict())), strict=True)
    x, t, ctx = latents(2, 5, config), torch.tensor([937.5, 250.0]), prompt(2, config)
    with torch.no_grad():
        want = theirs(x, t, ctx, return_dict=False)[0]
        got = ours(x, t, ctx)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_streaming_with_unbounded_cache_is_block_causal_attention(backend):
    model, chunk, chunks = tiny_model(), 2, 4
    frames = chunk * chunks
    x, ctx = latents(2, frames), prompt(2)
    t = torch.rand(2, frames) * 1000  # one t per frame: each chunk carries its own
    with torch.no_grad():
        want = model(x, t, ctx, chunk_frames=chunk)
        cache = model.new_cache(
            2, TOKENS_H, TOKENS_W, sink_frames=0, window_frames=frames, chunk_frames=chunk, backend=backend
        )
        got = stream(model, x, t, model.encode_text(ctx), cache, chunk)
        bidirectional = model(x, t, ctx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # every chunk but the last misses later frames that full attention sees
    assert (got[:, :, :-chunk] - bidirectional[:, :, :-chunk]).abs().max() > 1e-3


def test_one_chunk_on_empty_cache_is_full_attention():
    model, x, ctx = tiny_model(), latents(1, 3), prompt(1)
    with torch.no_grad():
        want = model(x, 500.0, ctx)
        got = model.forward_chunk(x, 500.0, ctx, model.new_cache(1, TOKENS_H, TOKENS_W))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def run_published_stream(model, text, noise, alpha=0.999, sink_frames=3):
    """S = W = C = 3: two denoising steps per chunk (warped t) and the t = 0 cache pass."""
    cache = model.new_cache(
        1, TOKENS_H, TOKENS_W, sink_frames=sink_frames, window_frames=3, chunk_frames=3, alpha=alpha
    )
    outs = []
    for x in noise:
        for t in (1000.0, 937.5):
            v = model.forward_chunk(x, t, text, cache)
        x0 = x - v
        model.forward_chunk(x0, 0.0, text, cache, update_cache=True)
        outs.append(v)
    return outs, cache


def test_published_setting_streams_finite_and_deterministic():
    model = tiny_model()
    noise = [latents(1, 3) for _ in range(6)]
    with torch.no_grad():
        text = model.encode_text(prompt(1))
        first, cache = run_published_stream(model, text, noise)
        second, _ = run_published_stream(model, text, noise)
    assert cache.frames_appended == [18] * WAN_TINY.num_layers
    for a, b in zip(first, second):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)


def test_ema_sink_and_baselines_differ_only_after_first_eviction():
    """Chunks 0-2 see the same context whatever alpha (the first eviction happens when chunk 2 is
    appended); from chunk 3 on the EMA-Sink, the frozen sink and the plain window differ."""
    model = tiny_model()
    noise = [latents(1, 3) for _ in range(5)]
    with torch.no_grad():
        text = model.encode_text(prompt(1))
        ema, _ = run_published_stream(model, text, noise, alpha=0.5)
        frozen, _ = run_published_stream(model, text, noise, alpha=1.0)
        window, _ = run_published_stream(model, text, noise, sink_frames=0)
    for i in range(3):
        torch.testing.assert_close(ema[i], frozen[i], atol=0, rtol=0)
    for i in (3, 4):
        assert (ema[i] - frozen[i]).abs().max() > 1e-4
    assert (window[2] - frozen[2]).abs().max() > 1e-4  # the plain window has no sink from chunk 2 on


def test_encode_text_reuse_is_identical():
    model, x, ctx = tiny_model(), latents(2, 3), prompt(2)
    with torch.no_grad():
        text = model.encode_text(ctx)
        assert isinstance(text, TextKV) and len(text.kv) == WAN_TINY.num_layers
        torch.testing.assert_close(model(x, 700.0, text), model(x, 700.0, ctx), atol=0, rtol=0)
        a = stream(model, x, torch.tensor(700.0), text, model.new_cache(2, TOKENS_H, TOKENS_W), 3)
        b = stream(model, x, torch.tensor(700.0), ctx, model.new_cache(2, TOKENS_H, TOKENS_W), 3)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        # a short prompt is zero-padded to text_len, as Wan does
        short = prompt(2, length=3)
        padded = torch.cat([short, short.new_zeros(2, WAN_TINY.text_len - 3, WAN_TINY.text_dim)], 1)
        torch.testing.assert_close(model(x, 700.0, short), model(x, 700.0, padded), atol=0, rtol=0)


def test_per_frame_timesteps():
    model, x, ctx = tiny_model(), latents(2, 3), prompt(2)
    with torch.no_grad():
        same = model(x, torch.tensor([300.0, 800.0]), ctx)
        per_frame = model(x, torch.tensor([[300.0] * 3, [800.0] * 3]), ctx)
        mixed = model(x, torch.tensor([[300.0, 300.0, 900.0], [800.0] * 3]), ctx)
    torch.testing.assert_close(per_frame, same, atol=1e-6, rtol=1e-6)
    assert (mixed[0] - same[0]).abs().max() > 1e-3


def test_bfloat16_inference():
    model, x, ctx = tiny_model(), latents(1, 3), prompt(1)
    model_bf16 = tiny_model().to(torch.bfloat16)
    model_bf16.load_state_dict(model.state_dict())
    with torch.no_grad():
        want = model(x, 600.0, ctx)
        got = model_bf16(x, 600.0, ctx)
        cache = model_bf16.new_cache(1, TOKENS_H, TOKENS_W)
        assert cache.k.dtype == torch.bfloat16 and cache.sink_k.dtype == torch.float32
        streamed = model_bf16.forward_chunk(x, 600.0, ctx, cache)
    assert got.dtype == streamed.dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()) < 3e-2
    torch.testing.assert_close(streamed, got, atol=0.05, rtol=0.05)


def test_gradient_flows_through_the_exit_step_only():
    model, ctx = tiny_model(), prompt(1)
    cache = model.new_cache(1, TOKENS_H, TOKENS_W)
    with torch.no_grad():
        model.forward_chunk(latents(1, 3), 0.0, ctx, cache, update_cache=True)
    k_before = cache.k.clone()
    model.forward_chunk(latents(1, 3), 500.0, ctx, cache).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert not cache.k.requires_grad and cache.frames_appended == [3] * WAN_TINY.num_layers
    assert torch.equal(cache.k[:, :, : 3 * TOKENS_H * TOKENS_W], k_before[:, :, : 3 * TOKENS_H * TOKENS_W])


def test_bad_inputs_raise():
    model = tiny_model()
    x, ctx = latents(1, 3), prompt(1)
    with pytest.raises(ValueError, match="tokens per frame"):
        model.forward_chunk(x, 0.0, ctx, model.new_cache(1, 2 * TOKENS_H, 2 * TOKENS_W))
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.zeros(1, 2), ctx)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(1, 4, 3, 6, 8), 0.0, ctx)
    with pytest.raises(ValueError, match="multiples of the patch"):
        model(torch.randn(1, 16, 3, 5, 8), 0.0, ctx)
    with pytest.raises(ValueError, match="batch"):
        model(x, 0.0, model.encode_text(prompt(2)))


POOLED = dataclasses.replace(WAN_TINY, text_pooled=True)


def test_pooled_text_starts_as_a_no_op_ignores_padding_and_streams():
    from reward_forcing.models.loading import infer_config

    plain, x, ctx = tiny_model(), latents(2, 4), prompt(2)
    grown = CausalWanModel(POOLED).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("text_pool.") for k in missing)
    model = tiny_model(POOLED)
    with torch.no_grad():
        # zero-initialised last layer: the same function as without it
        torch.testing.assert_close(grown(x, 700.0, ctx), plain(x, 700.0, ctx), atol=0, rtol=0)
        # the mean over the prompt's tokens through the MLP, blind to the zero padding
        short = prompt(2, length=3)
        padded = torch.cat([short, short.new_zeros(2, WAN_TINY.text_len - 3, WAN_TINY.text_dim)], 1)
        pooled = model.encode_text(short).pooled
        torch.testing.assert_close(pooled, model.text_pool(short.mean(1)), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.encode_text(padded).pooled, pooled, atol=1e-6, rtol=1e-6)
        # it changes the output, and streaming through the cache still equals block-causal attention
        off = dataclasses.replace(model.encode_text(ctx), pooled=None)
        assert (model(x, 700.0, ctx) - model(x, 700.0, off)).abs().max() > 1e-3
        t = torch.rand(2, 4) * 1000
        cache = model.new_cache(2, TOKENS_H, TOKENS_W, sink_frames=0, window_frames=4, chunk_frames=2)
        got = stream(model, x, t, model.encode_text(ctx), cache, 2)
        torch.testing.assert_close(got, model(x, t, ctx, chunk_frames=2), atol=1e-5, rtol=1e-5)
    assert infer_config(model.state_dict(), num_heads=2, text_len=8).text_pooled
    assert not infer_config(plain.state_dict(), num_heads=2, text_len=8).text_pooled


PLACED = dataclasses.replace(WAN_TINY, absolute_position=True)


def test_absolute_position_lets_tokens_tell_where_they_are_and_streams():
    """RoPE alone is blind to place: tokens of one content get one output wherever they are (attention
    mixes equal values), so a RoPE-only model cannot put an object where its prompt implies. With
    ``absolute_position`` they differ by place; grown from zeros it changes nothing."""
    from reward_forcing.models.loading import infer_config

    plain, ctx = tiny_model(), prompt(2)
    flat = torch.full((2, WAN_TINY.in_dim, 4, 2 * TOKENS_H, 2 * TOKENS_W), 0.3)
    grown = CausalWanModel(PLACED).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["position_embedding.bias", "position_embedding.weight"]
    model = tiny_model(PLACED)
    with torch.no_grad():
        torch.testing.assert_close(grown(flat, 700.0, ctx), plain(flat, 700.0, ctx), atol=0, rtol=0)
        for net, blind in ((plain, True), (model, False)):
            out = net(flat, 700.0, ctx)
            shifted = (out - out.roll(2, dims=3)).abs().max() + (out - out.roll(2, dims=4)).abs().max()
            assert (shifted < 1e-5) == blind, float(shifted)
        out = plain(flat, 700.0, ctx)  # ...nor can it tell one frame from another
        torch.testing.assert_close(out, out.roll(1, dims=2), atol=1e-5, rtol=1e-5)
        x, t = latents(2, 4), torch.rand(2, 4) * 1000
        cache = model.new_cache(2, TOKENS_H, TOKENS_W, sink_frames=0, window_frames=4, chunk_frames=2)
        got = stream(model, x, t, model.encode_text(ctx), cache, 2)
        torch.testing.assert_close(got, model(x, t, ctx, chunk_frames=2), atol=1e-5, rtol=1e-5)
    assert infer_config(model.state_dict(), num_heads=2, text_len=8).absolute_position
    assert not infer_config(plain.state_dict(), num_heads=2, text_len=8).absolute_position


LAID_OUT = dataclasses.replace(WAN_TINY, layout=True)


def test_layout_conditions_the_first_frame_only_and_streams():
    """``layout``: the context's states after ``text_len`` are added, projected, to the first latent
    frame's tokens (one per token, row-major); grown from zeros or given a zero layout it changes
    nothing; it reaches later frames only through attention; streaming adds it to the stream's first
    chunk only, so streaming through the cache still equals block-causal attention."""
    from reward_forcing.models.loading import infer_config

    plain, tokens = tiny_model(), TOKENS_H * TOKENS_W
    text, layout = prompt(2), torch.randn(2, tokens, WAN_TINY.text_dim)
    ctx, empty = torch.cat([text, layout], 1), torch.cat([text, torch.zeros_like(layout)], 1)
    grown = CausalWanModel(LAID_OUT).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing == ["layout_embedding.weight"]
    model, x = tiny_model(LAID_OUT), latents(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, 700.0, ctx), plain(x, 700.0, text), atol=0, rtol=0)
        torch.testing.assert_close(model(x, 700.0, empty), plain_twin(model)(x, 700.0, text), atol=1e-6, rtol=1e-6)
        # the layout moves the first frame; with frame-causal chunks a later frame's own tokens
        # are untouched, so frame 1 changes only through attention to frame 0
        d = (model(x, 700.0, ctx, chunk_frames=1) - model(x, 700.0, empty, chunk_frames=1)).abs()
        assert d[:, :, 0].max() > 1e-3 and d[:, :, 1].max() > 1e-4
        one = model(x[:, :, :1], 700.0, ctx) - model(x[:, :, :1], 700.0, empty)
        torch.testing.assert_close(
            one,
            (model(x, 700.0, ctx, chunk_frames=1) - model(x, 700.0, empty, chunk_frames=1))[:, :, :1],
            atol=1e-5,
            rtol=1e-5,
        )
        t = torch.rand(2, 4) * 1000
        cache = model.new_cache(2, TOKENS_H, TOKENS_W, sink_frames=0, window_frames=4, chunk_frames=2)
        got = stream(model, x, t, model.encode_text(ctx), cache, 2)
        torch.testing.assert_close(got, model(x, t, ctx, chunk_frames=2), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="layout state per token"):
            model(x, 700.0, text)
        with pytest.raises(ValueError, match="a frame of this x has"):
            model(x, 700.0, torch.cat([text, layout[:, :-1]], 1))
    assert infer_config(model.state_dict(), num_heads=2, text_len=8).layout
    assert not infer_config(plain.state_dict(), num_heads=2, text_len=8).layout


def plain_twin(model):
    """``model`` without its layout embedding (the same other weights)."""
    twin = CausalWanModel(dataclasses.replace(model.config, layout=False)).eval()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if k != "layout_embedding.weight"})
    return twin
