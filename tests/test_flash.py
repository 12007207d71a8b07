"""backend="flash": the adapter against a stand-in with flash-attn 2's exact ``flash_attn_func``
signature (installed as a fake ``flash_attn`` module), checked against the float64 oracle and
against the SDPA backend; the real flash-attn against the oracle where it imports (GPU)."""

import inspect
import math
import sys
import types

import pytest
import torch
from reward_forcing import ops
from reward_forcing.functional import streaming_attention

KW = dict(frame_tokens=8, chunk_frames=2, sink_frames=2, window_frames=3, alpha=0.9)


def _standin_flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """flash-attn 2's signature; what flash-attn requires of its inputs is asserted."""
    assert q.dtype in (torch.float16, torch.bfloat16) and k.dtype == v.dtype == q.dtype
    assert q.dim() == k.dim() == v.dim() == 4 and k.shape == v.shape
    assert q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:]
    assert all(x.stride(-1) == 1 for x in (q, k, v))
    assert dropout_p == 0.0 and not causal and window_size == (-1, -1) and alibi_slopes is None
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    out = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.float()).to(q.dtype)
    return out


@pytest.fixture
def standin(monkeypatch):
    calls = []

    def func(*args, **kwargs):
        inspect.signature(_standin_flash_attn_func).bind(*args, **kwargs)  # exact signature
        calls.append((args[1].shape, kwargs))
        return _standin_flash_attn_func(*args, **kwargs)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func = func
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # None: import fails
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return calls


def qkv(dtype, chunks=6, heads=2, dim=16):
    n = chunks * KW["chunk_frames"] * KW["frame_tokens"]
    return [torch.randn(1, n, heads, dim, dtype=torch.float64).to(dtype) for _ in range(3)]


def test_flash_matches_oracle_and_sdpa(standin):
    """bf16 storage: within bf16 round-off of the float64 oracle (on the same bf16-rounded
    inputs), and of the SDPA backend, which computes the same dense call. The dense steady-state
    path over the whole [sink | ring] buffer is used from chunk 3 on."""
    q, k, v = qkv(torch.bfloat16)
    want = streaming_attention(*(x.double() for x in (q, k, v)), backend="naive", **KW)
    got = streaming_attention(q, k, v, backend="flash", **KW)
    sdpa = streaming_attention(q, k, v, backend="sdpa", **KW)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=0, atol=3e-2)
    torch.testing.assert_close(got, sdpa, rtol=0, atol=1.6e-2)
    full = (KW["sink_frames"] + KW["window_frames"] + KW["chunk_frames"]) * KW["frame_tokens"]
    lengths = [shape[1] for shape, _ in standin]
    assert len(lengths) == 6 and lengths[-1] == full  # the whole buffer, steady state
    assert all(kw["causal"] is False and "softmax_scale" in kw for _, kw in standin)


def test_flash_with_rope_in_the_model(standin):
    """The Wan model's chunk forward with the flash backend equals the SDPA backend's (bf16)."""
    from reward_forcing.models.causal_wan import CausalWanModel
    from reward_forcing.models.wan_config import WAN_TINY

    model = CausalWanModel(WAN_TINY).to(torch.bfloat16).eval()
    text = torch.randn(1, WAN_TINY.text_len, WAN_TINY.text_dim)
    outs = {}
    for backend in ("sdpa", "flash"):
        cache = model.new_cache(1, 2, 2, backend=backend)
        x = torch.randn(1, WAN_TINY.in_dim, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            kv = model.encode_text(text)
            for _ in range(4):  # into the steady state
                out = model.forward_chunk(x, 500.0, kv, cache)
                model.forward_chunk(x, 0.0, kv, cache, update_cache=True)
        outs[backend] = out.float()
    scale = outs["sdpa"].abs().max().item()
    assert (outs["flash"] - outs["sdpa"]).abs().max().item() <= 0.03 * scale
    assert standin


def test_flash_errors(standin, monkeypatch):
    q, k, v = qkv(torch.float32, chunks=1)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        streaming_attention(q, k, v, backend="flash", **KW)
    q, k, v = (x.to(torch.bfloat16).requires_grad_() for x in qkv(torch.float32, chunks=1))
    with pytest.raises(RuntimeError, match="inference only"):
        streaming_attention(q, k, v, backend="flash", **KW)
    for name in ops.FLASH_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"reward_forcing\[flash\]"):
        ops.flash_attn_func()


def _real_flash():
    try:
        return ops.flash_attn_func()
    except ImportError:
        return None


@pytest.mark.gpu
@pytest.mark.skipif(_real_flash() is None, reason="flash-attn does not import")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_real_flash_attn_matches_oracle(dtype):
    """The installed flash-attn (FA3 / FA4 / FA2, whichever imports first) on CUDA, with RoPE,
    against the float64 oracle on the same rounded inputs."""
    from reward_forcing.rope import wan_rope_tables

    rope = wan_rope_tables(64, 2, 4)
    q, k, v = (x.cuda() for x in qkv(dtype, heads=4, dim=64))
    want = streaming_attention(*(x.double() for x in (q, k, v)), backend="naive", rope=rope, **KW)
    got = streaming_attention(q, k, v, backend="flash", rope=rope, **KW)
    tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)
    assert math.isfinite(got.float().abs().max().item())
