"""The VLM reward loader on a tiny, randomly initialised Qwen2-VL built offline from a config."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from reward_forcing.train.vlm_reward import REWARD_TOKENS, VLMReward, smart_resize  # noqa: E402

SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|video_pad|>",
    "<|image_pad|>",
    *REWARD_TOKENS,
]


def _save_tiny_reward(path, mq_mean=0.5, mq_std=2.0, rm_head=True):
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    words = "[UNK] user rate the video generated from prompt : . a ball visual quality motion text alignment".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    ids = dict(zip(SPECIAL, tokenizer.convert_tokens_to_ids(SPECIAL)))
    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if rm_head:
        save_file({"weight": torch.randn(3, 32)}, str(path / "rm_head.safetensors"))
    (path / "reward_config.json").write_text(
        json.dumps(
            {"inference_config": {"MQ_mean": mq_mean, "MQ_std": mq_std}, "caption": "a ball", "max_pixels": 56 * 56}
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    return _save_tiny_reward(tmp_path_factory.mktemp("vlm"))


def _videos():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, 4, 40, 48, 3), dtype=np.uint8)


def test_scores_batch_deterministic_and_normalised(tiny_reward):
    reward = VLMReward(tiny_reward)
    videos = _videos()
    r = reward(videos)
    assert r.shape == (2,) and r.dtype == torch.float32 and torch.isfinite(r).all()
    assert not r.requires_grad
    assert torch.equal(reward(videos), r)  # deterministic
    assert torch.equal(reward(videos[1:]), r[1:])  # batch of 1 == its score in the batch
    assert r[0] != r[1]
    raw = torch.tensor([reward.raw(v) for v in videos])
    torch.testing.assert_close(r, ((raw - 0.5) / 2.0).float())  # the stored constants are applied
    assert set(reward.scores(videos[0])) == {"VQ", "MQ", "TA"}
    cfg = json.loads((tiny_reward / "reward_config.json").read_text())
    cfg["inference_config"]["MQ_mean"] = 1.5
    shifted_dir = tiny_reward.parent / "shifted"
    shifted_dir.mkdir(exist_ok=True)
    for f in tiny_reward.iterdir():
        (shifted_dir / f.name).write_bytes(f.read_bytes())
    (shifted_dir / "reward_config.json").write_text(json.dumps(cfg))
    torch.testing.assert_close(VLMReward(shifted_dir)(videos), r - 0.5)  # MQ_mean +1 shifts by -1/std


def test_missing_path_or_rm_head_is_a_clear_error(tmp_path, tiny_reward):
    with pytest.raises(FileNotFoundError, match="VLM reward folder not found.*nope"):
        VLMReward(tmp_path / "nope")
    no_head = tmp_path / "nohead"
    no_head.mkdir()
    for f in tiny_reward.iterdir():
        if f.name != "rm_head.safetensors":
            (no_head / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match="no rm_head"):
        VLMReward(no_head)
    from safetensors.torch import load_file, save_file

    # VideoAlign's full fine-tunes keep the head as a "...rm_head.weight" key among the weights
    head = load_file(str(tiny_reward / "rm_head.safetensors"))["weight"]
    save_file({"model.rm_head.weight": head}, str(no_head / "extra.safetensors"))
    videos = _videos()
    torch.testing.assert_close(VLMReward(no_head)(videos), VLMReward(tiny_reward)(videos))
    (no_head / "reward_config.json").write_text("{}")
    with pytest.raises(ValueError, match="MQ_mean"):
        VLMReward(no_head)


def test_preprocessing_matches_qwen2_vl_processor():
    """smart_resize and the patch layout/normalisation equal transformers' own (PIL) Qwen2-VL
    image processor's: a 2-frame still video at a multiple of 28 px (no resampling) gives the same
    pixel_values and grid as the image."""
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    from reward_forcing.train.vlm_reward import video_patches

    for hw in [(40, 48), (480, 832), (20, 300), (1000, 1000)]:
        assert smart_resize(*hw, max_pixels=200_000) == pil.smart_resize(*hw, max_pixels=200_000)
    img = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    ref = pil.Qwen2VLImageProcessorPil()(images=[img], return_tensors="pt")
    pixels, grid = video_patches(np.stack([img, img]))
    assert torch.equal(grid, ref["image_grid_thw"])
    torch.testing.assert_close(pixels, ref["pixel_values"], atol=1e-5, rtol=0)
