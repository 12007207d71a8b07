"""Fused per-token ops (reward_forcing.fused): the C++ CPU twin against the float64 reference in
every dtype, the references against the unfused model's formulas, input checks, the Wan block
behind set_fused, and (GPU) the torch.compile'd CUDA path."""

import pytest
import reward_forcing
import torch
from reward_forcing import fused
from reward_forcing.models import causal_wan

needs_cpp = pytest.mark.skipif(not reward_forcing.HAS_CPP, reason="C++ extension not built")
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# max |err| allowed against the float64 reference, relative to the output's magnitude: one
# rounding of the output dtype (plus float32 accumulation for the half types)
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def rows(dtype, b=2, frames=3, per_frame=5, d=48, device="cpu"):
    x = torch.randn(b, frames * per_frame, d, dtype=torch.float64) * 3 + 0.5
    return x.to(device=device, dtype=dtype)


def per_frame(x, frames):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.randn(x.shape[0], frames, 1, x.shape[2], dtype=torch.float64, device=x.device).to(acc)


def close(got, want, dtype):
    assert got.dtype == dtype
    err = (got.double() - want).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, want.abs().max().item()), err


def exact_reference(op, *args):
    """The reference in float64 on the same (rounded) inputs."""
    return op(*(a.double() if isinstance(a, torch.Tensor) else a for a in args))


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frames", [1, 3])
def test_cpp_twins_against_float64(dtype, frames):
    x, y = rows(dtype), rows(dtype)
    shift, scale, gate = (per_frame(x, frames) for _ in range(3))
    close(
        fused.layernorm_modulate(x, shift, scale, 1e-6),
        exact_reference(fused.layernorm_modulate_reference, x, shift, scale, 1e-6),
        dtype,
    )
    close(fused.gated_residual(x, y, gate), exact_reference(fused.gated_residual_reference, x, y, gate), dtype)
    wq, wk = torch.randn(48), torch.randn(48)
    got_q, got_k = fused.qk_rmsnorm(x, y, wq, wk, 1e-6)
    want_q, want_k = exact_reference(fused.qk_rmsnorm_reference, x, y, wq, wk, 1e-6)
    close(got_q, want_q, dtype)
    close(got_k, want_k, dtype)


@needs_cpp
def test_the_twin_is_what_runs_on_cpu(monkeypatch):
    """Without autograd on a CPU the C++ op serves the call (a broken reference is not used)."""
    x = rows(torch.float32)
    g = per_frame(x, 3)
    monkeypatch.setattr(fused, "gated_residual_reference", lambda *a: None)
    assert fused.gated_residual(x, x, g) is not None
    called = []
    monkeypatch.setattr(torch.ops.reward_forcing, "gated_residual", lambda *a: called.append(1) or a[0], raising=False)
    fused.gated_residual(x, x, g)
    assert called


def test_references_are_the_model_formulas():
    """float64 inputs: the fused references compute what the unfused block does (the blocks'
    own norm, modulation, gated residual and RMSNorm), to float32 round-off: the model computes
    its norms and modulation in float32 whatever its dtype, the references in float64."""
    x, y = rows(torch.float64), rows(torch.float64)
    shift, scale, gate = (per_frame(x, 3) for _ in range(3))
    norm = causal_wan.WanLayerNorm(48, 1e-6, elementwise_affine=False).double()
    want = causal_wan._modulate(norm(x), shift, scale)
    torch.testing.assert_close(fused.layernorm_modulate_reference(x, shift, scale, 1e-6), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        fused.gated_residual_reference(x, y, gate), causal_wan._gated_residual(x, y, gate), rtol=1e-5, atol=1e-5
    )
    rms = causal_wan.WanRMSNorm(48, 1e-6).double()
    with torch.no_grad():
        rms.weight.normal_()
    q, _ = fused.qk_rmsnorm_reference(x, y, rms.weight, rms.weight, 1e-6)
    torch.testing.assert_close(q, rms(x), rtol=1e-5, atol=1e-5)


def test_input_checks():
    x = rows(torch.float32)
    g = per_frame(x, 3)
    with pytest.raises(ValueError, match=r"\[B, L, D\]"):
        fused.gated_residual(x[0], x[0], g)
    with pytest.raises(ValueError, match="not a multiple of 4 frames"):
        fused.gated_residual(x, x, per_frame(x, 4))
    with pytest.raises(ValueError, match="B=2, D=48"):
        fused.layernorm_modulate(x, g[:, :, :, :7], g)
    with pytest.raises(ValueError, match="differ"):
        fused.gated_residual(x, x.double(), g)
    with pytest.raises(TypeError, match="float16"):
        fused.qk_rmsnorm(x.int(), x.int(), torch.ones(48), torch.ones(48))
    with pytest.raises(ValueError, match=r"wk must be a \[48\]"):
        fused.qk_rmsnorm(x, x, torch.ones(48), torch.ones(47))


@needs_cpp
def test_native_ops_validate_before_pointer_math():
    x = rows(torch.float32)
    ops = torch.ops.reward_forcing
    with pytest.raises(RuntimeError, match="gate must be Float for Float rows"):
        ops.gated_residual(x, x, torch.zeros(2, 3, 48, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="not a multiple"):
        ops.layernorm_modulate(x, torch.zeros(2, 4, 48), torch.zeros(2, 4, 48), 1e-6)
    with pytest.raises(RuntimeError, match=r"\[B, F, D\]"):
        ops.gated_residual(x, x, torch.zeros(2, 3, 47))
    with pytest.raises(RuntimeError, match="norm weights"):
        ops.qk_rmsnorm(x, x, torch.ones(48), torch.ones(3), 1e-6)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.gated_residual(x, x, torch.zeros(2, 48, 3).transpose(1, 2))


def test_autograd_uses_the_reference():
    x = rows(torch.float64).requires_grad_()
    shift, scale = per_frame(x, 3), per_frame(x, 3)
    out = fused.layernorm_modulate(x, shift, scale)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_wan_block_fused_equals_unfused(dtype):
    """forward_chunk of a small Wan model, fused vs unfused, over a few chunks (cache appends):
    float64 and float32 within float32 round-off (the unfused model's norms compute in float32
    whatever its dtype); bf16 within bf16 round-off (the fused path skips one rounding)."""
    from reward_forcing.models.wan_config import WAN_TINY

    model = causal_wan.CausalWanModel(WAN_TINY).to(dtype).eval()
    text = torch.randn(1, WAN_TINY.text_len, WAN_TINY.text_dim)
    outs = {}
    for enabled in (False, True):
        model.set_fused(enabled)
        assert all(b.fused == enabled and b.self_attn.fused == enabled for b in model.blocks)
        cache = model.new_cache(1, 2, 2)
        gen = torch.Generator().manual_seed(5)
        res = []
        with torch.no_grad():
            kv = model.encode_text(text)
            for _ in range(3):
                x = torch.randn(1, WAN_TINY.in_dim, 3, 4, 4, generator=gen)
                t = torch.tensor([[700.0, 500.0, 300.0]])  # one t per frame: F = 3 modulation
                res.append(model.forward_chunk(x, t, kv, cache).double())
                model.forward_chunk(x, 0.0, kv, cache, update_cache=True)
        outs[enabled] = torch.cat(res)
    scale = outs[False].abs().max().item()
    err = (outs[True] - outs[False]).abs().max().item()
    tol = {torch.float64: 1e-5, torch.float32: 1e-4, torch.bfloat16: 0.05}[dtype]
    assert err <= tol * scale, (err, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["kernel", "compile"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_gpu_ops_against_float64(dtype, impl):
    """On CUDA: our kernels (csrc/cuda/fused_cuda.cu) and the torch.compile'd references, with
    a width that is not a multiple of the block (1000) and per-frame vectors."""
    x, y = rows(dtype, d=1000, device="cuda"), rows(dtype, d=1000, device="cuda")
    shift, scale, gate = (per_frame(x, 3) for _ in range(3))
    w1, w2 = torch.randn(1000, device="cuda"), torch.randn(1000, device="cuda")
    ops = dict(
        kernel=(fused.layernorm_modulate, fused.gated_residual, fused.qk_rmsnorm),
        compile=(fused._compiled_layernorm_modulate, fused._compiled_gated_residual, fused._compiled_qk_rmsnorm),
    )[impl]
    with torch.no_grad():
        close(
            ops[0](x, shift, scale, 1e-6),
            exact_reference(fused.layernorm_modulate_reference, x, shift, scale, 1e-6),
            dtype,
        )
        close(ops[1](x, y, gate), exact_reference(fused.gated_residual_reference, x, y, gate), dtype)
        got_q, got_k = ops[2](x, y, w1, w2, 1e-6)
        want_q, want_k = exact_reference(fused.qk_rmsnorm_reference, x, y, w1, w2, 1e-6)
        close(got_q, want_q, dtype)
        close(got_k, want_k, dtype)
    if impl == "kernel":
        with pytest.raises(RuntimeError, match="not a multiple"):
            torch.ops.reward_forcing.gated_residual(x, y, torch.zeros(2, 4, 1000, device="cuda", dtype=gate.dtype))


@pytest.mark.gpu
def test_gpu_fused_model_under_cuda_graphs():
    """The fused model on CUDA in bf16, eager vs CUDA-graph replay: identical; vs unfused:
    within bf16 round-off."""
    from reward_forcing.models.wan_config import WAN_TINY
    from reward_forcing.pipelines.accelerate import make_forward_chunk

    model = causal_wan.CausalWanModel(WAN_TINY).cuda().to(torch.bfloat16).eval()
    text = torch.randn(1, WAN_TINY.text_len, WAN_TINY.text_dim, device="cuda")

    def stream(fused_on, mode):
        model.set_fused(fused_on)
        cache = model.new_cache(1, 4, 4, backend="kernel")
        fwd = make_forward_chunk(model, cache, mode)
        gen = torch.Generator(device="cuda").manual_seed(2)
        out = []
        with torch.no_grad():
            kv = model.encode_text(text)
            for _ in range(5):
                x = torch.randn(1, WAN_TINY.in_dim, 3, 8, 8, device="cuda", generator=gen)
                out.append(fwd(x, 500.0, kv, cache).double())
                fwd(x, 0.0, kv, cache, update_cache=True)
        return torch.cat(out), getattr(fwd, "replays", None)

    eager, _ = stream(True, "none")
    graphs, replays = stream(True, "cuda-graphs")
    plain, _ = stream(False, "none")
    assert replays and replays > 0
    torch.testing.assert_close(graphs, eager, rtol=0, atol=0)
    assert (eager - plain).abs().max().item() <= 0.05 * plain.abs().max().item()
