"""x0-prediction configs (the world model): the head's output is the clean latents and the model
returns the matching velocity, so every caller (pipeline, DMD, ODE init) works unchanged."""

import dataclasses

import pytest
import torch

from reward_forcing.models.causal_wan import X0_MIN_SIGMA, CausalWanModel
from reward_forcing.models.wan_config import WAN_TINY, WanConfig


@pytest.mark.parametrize("t_shape", ["number", "batch", "frames"])
def test_velocity_recovers_the_heads_x0(t_shape):
    torch.manual_seed(0)
    config = dataclasses.replace(WAN_TINY, prediction="x0")
    x0_model, v_model = CausalWanModel(config).double(), CausalWanModel(WAN_TINY).double()
    v_model.load_state_dict(x0_model.state_dict())  # same weights: v_model returns the raw head
    x = torch.randn(2, 16, 4, 4, 4, dtype=torch.float64)
    ctx = torch.randn(2, 8, WAN_TINY.text_dim, dtype=torch.float64)
    sigma = {
        "number": torch.tensor(0.6),
        "batch": torch.tensor([0.3, 0.9]),
        "frames": torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.01, 0.5, 1.0, 0.05]]),
    }[t_shape]
    v = x0_model(x, sigma * 1000, ctx)
    head = v_model(x, sigma * 1000, ctx)
    s = ((sigma * 1000).double() / 1000).reshape((2, 1, -1, 1, 1) if sigma.dim() else ())
    assert torch.allclose(v, (x - head) / s.clamp(min=X0_MIN_SIGMA), rtol=1e-9, atol=1e-9)
    # where sigma >= the floor, x_t - sigma v is exactly the head's x0
    ok = (s >= X0_MIN_SIGMA).expand_as(x)
    assert torch.allclose((x - s * v)[ok], head[ok], rtol=1e-9, atol=1e-9)
    assert torch.isfinite(x0_model(x, 0.0, ctx)).all()  # the t = 0 cache pass stays finite


def test_prediction_is_checked():
    with pytest.raises(ValueError, match="prediction"):
        WanConfig(prediction="eps")
