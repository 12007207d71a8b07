import pytest
import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.wan_config import WAN_TINY
from reward_forcing.scheduler import FewStepFlowSchedule
from reward_forcing.train.rollout import draw_exit_step, rollout

SCHED = FewStepFlowSchedule()


def _randn(seed):
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=gen)


def _setup(chunks=3):
    torch.manual_seed(0)
    model = CausalWanModel(WAN_TINY)
    text = model.encode_text(torch.randn(1, 5, WAN_TINY.text_dim))
    # sink 1 + window 2 frames, chunks of 2: the third chunk evicts into the sink
    cache = model.new_cache(1, 2, 2, sink_frames=1, window_frames=2, chunk_frames=2, alpha=0.9)
    noise = torch.randn(1, 16, 2 * chunks, 4, 4)
    return model, text, cache, noise


def _spy(model):
    calls = []
    inner = model.forward_chunk

    def spy(x, t, context, cache, update_cache=False):
        out = inner(x, t, context, cache, update_cache)
        calls.append((float(t), update_cache, out.requires_grad))
        return out

    model.forward_chunk = spy
    return calls


@pytest.mark.parametrize("exit_step", [0, 2, 3])
def test_gradient_only_through_exit_step(exit_step):
    model, text, cache, noise = _setup()
    calls = _spy(model)
    x0 = rollout(model, text, noise, cache, exit_step, SCHED, _randn(1))
    per_chunk = exit_step + 2  # denoising steps up to the exit, then the t = 0 cache pass
    assert len(calls) == 3 * per_chunk
    for chunk in range(3):
        seq = calls[chunk * per_chunk : (chunk + 1) * per_chunk]
        # the same exit step in every chunk: the same timesteps, in order
        assert [t for t, _, _ in seq] == [*SCHED.timesteps[: exit_step + 1], 0.0]
        assert [u for _, u, _ in seq] == [False] * (exit_step + 1) + [True]
        # only the exit step's forward carries grad; the cache pass does not
        assert [g for _, _, g in seq] == [False] * exit_step + [True, False]
    x0.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_rollout_matches_no_grad_and_cache_is_clean():
    model, text, cache, noise = _setup()
    x_grad = rollout(model, text, noise, cache, 2, SCHED, _randn(3))
    cached = [t.clone() for t in (cache.k, cache.v, cache.sink_k, cache.sink_v, cache.state)]
    x_grad.sum().backward()  # backward after the in-place cache writes of later chunks
    with torch.no_grad():
        x_ref = rollout(model, text, noise, cache, 2, SCHED, _randn(3))
    assert torch.equal(x_grad.detach(), x_ref)
    for a, b in zip(cached, (cache.k, cache.v, cache.sink_k, cache.sink_v, cache.state)):
        assert not a.requires_grad and torch.equal(a, b)
    assert cache.frames_appended == [6, 6]


def test_exit_step_gradient_equals_direct_forward():
    """The last chunk's gradient, taken after its own t = 0 pass has written the cache in place
    (ring append + eviction into the sink), equals that of a plain forward_chunk against the cache
    as it stood before the chunk: backward saw the context of its forward, and nothing earlier
    leaks gradient into it."""
    model, text, cache, noise = _setup(chunks=3)
    x0 = rollout(model, text, noise, cache, 0, SCHED)
    weight = model.blocks[0].self_attn.q.weight
    (g_rollout,) = torch.autograd.grad(x0[:, :, 4:].sum(), weight)
    with torch.no_grad():
        rollout(model, text, noise[:, :, :4], cache, 0, SCHED)
    v = model.forward_chunk(noise[:, :, 4:], SCHED.timesteps[0], text, cache)
    (g_direct,) = torch.autograd.grad(SCHED.predict_x0(noise[:, :, 4:], v, SCHED.sigmas[0]).sum(), weight)
    assert g_direct.abs().sum() > 0
    torch.testing.assert_close(g_rollout, g_direct, rtol=0, atol=0)


def test_exit_step_is_a_function_of_step():
    draws = [draw_exit_step(s, 4, seed=5) for s in range(200)]
    assert draws == [draw_exit_step(s, 4, seed=5) for s in range(200)]
    assert set(draws) == {0, 1, 2, 3}
