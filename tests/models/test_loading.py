"""Checkpoint loading: every format of docs/design.md §6 round-trips a tiny model's weights exactly, the
config is inferred from the weights, and bad checkpoints fail loudly, naming what is wrong."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from reward_forcing.models import (
    WAN_1_3B,
    WAN_14B,
    WAN_TINY,
    CausalWanModel,
    infer_config,
    load_causal_wan,
    load_wan_state_dict,
)

WAN_CONFIG_JSON = {
    "_class_name": "WanModel",
    "model_type": "t2v",
    "dim": WAN_TINY.dim,
    "num_heads": WAN_TINY.num_heads,
    "text_len": WAN_TINY.text_len,
    "eps": WAN_TINY.eps,
}


def tiny_state_dict(seed=0):
    torch.manual_seed(seed)
    model = CausalWanModel(WAN_TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_loaded(model, state):
    got = model.state_dict()
    assert got.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def load32(path, **kw):
    return load_causal_wan(path, dtype=torch.float32, **kw)


def test_original_safetensors_file(tmp_path):
    state = tiny_state_dict()
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    model = load32(tmp_path / "diffusion_pytorch_model.safetensors", config=WAN_TINY)
    assert_loaded(model, state)
    assert model.config == WAN_TINY
    default = load_causal_wan(tmp_path / "diffusion_pytorch_model.safetensors", config=WAN_TINY)
    assert default.dtype == torch.bfloat16


def test_original_sharded_folder_with_index_and_config(tmp_path):
    state = tiny_state_dict()
    keys = sorted(state)
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, tmp_path / name)
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(WAN_CONFIG_JSON))
    model = load32(tmp_path)  # config inferred: shapes from the weights, heads from config.json
    assert model.config == WAN_TINY
    assert_loaded(model, state)
    # without the index, the shards are found by name
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").unlink()
    assert_loaded(load32(tmp_path), state)


def test_training_checkpoint_prefers_ema_and_strips_wrappers(tmp_path):
    raw, ema = tiny_state_dict(0), tiny_state_dict(1)

    def wrapped(state):  # WanDiffusionWrapper.model + FSDP / activation-checkpointing wrappers
        out = {}
        for k, v in state.items():
            k = k.replace("blocks.0.", "blocks.0._checkpoint_wrapped_module.")
            out[f"model._fsdp_wrapped_module._orig_mod.{k}"] = v
        return out

    torch.save(
        {"generator": wrapped(raw), "generator_ema": wrapped(ema), "step": torch.tensor(600)}, tmp_path / "model.pt"
    )
    assert_loaded(load32(tmp_path / "model.pt", config=WAN_TINY), ema)
    assert_loaded(load32(tmp_path / "model.pt", config=WAN_TINY, use_ema=False), raw)
    torch.save({"generator": {f"module.{k}": v for k, v in raw.items()}}, tmp_path / "no_ema.pt")
    assert_loaded(load32(tmp_path / "no_ema.pt", config=WAN_TINY), raw)
    torch.save(raw, tmp_path / "bare.pt")
    assert load_wan_state_dict(tmp_path / "bare.pt").keys() == raw.keys()


@pytest.mark.parametrize("layout", ["transformer_folder", "pipeline_folder_sharded"])
def test_diffusers_folder(tmp_path, layout):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state, c = tiny_state_dict(), WAN_TINY
    theirs = diffusers.WanTransformer3DModel(
        patch_size=c.patch_size,
        num_attention_heads=c.num_heads,
        attention_head_dim=c.head_dim,
        in_channels=c.in_dim,
        out_channels=c.out_dim,
        text_dim=c.text_dim,
        freq_dim=c.freq_dim,
        ffn_dim=c.ffn_dim,
        num_layers=c.num_layers,
        cross_attn_norm=c.cross_attn_norm,
        eps=c.eps,
    )
    theirs.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True)
    if layout == "transformer_folder":
        theirs.save_pretrained(tmp_path)
    else:
        theirs.save_pretrained(tmp_path / "transformer", max_shard_size="40KB")
        assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_causal_wan(tmp_path, config=None, dtype=torch.float32)
    assert model.config == dataclasses.replace(WAN_TINY, text_len=512)  # diffusers has no text_len
    assert_loaded(model, state)


def test_config_inferred_for_published_sizes():
    for config in (WAN_1_3B, WAN_14B):
        with torch.device("meta"):
            state = CausalWanModel(config).state_dict()
        assert infer_config(state) == config


def test_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_causal_wan(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        load_causal_wan(tmp_path)
    save_file(tiny_state_dict(), tmp_path / "diffusion_pytorch_model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="00002-of-00002"):
        load_causal_wan(tmp_path)


def test_bad_checkpoints_name_the_problem(tmp_path):
    state = tiny_state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.1.cross_attn.norm_k.weight"}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.1\.cross_attn\.norm_k\.weight"):
        load_causal_wan(tmp_path / "missing.safetensors", config=WAN_TINY)

    save_file({**state, "blocks.0.self_attn.extra": torch.zeros(2)}, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): blocks\.0\.self_attn\.extra"):
        load_causal_wan(tmp_path / "extra.safetensors", config=WAN_TINY)
    assert_loaded(load32(tmp_path / "extra.safetensors", config=WAN_TINY, strict=False), state)

    wrong = dataclasses.replace(WAN_TINY, ffn_dim=96)
    with pytest.raises(
        ValueError,
        match=r"shape mismatches \(6\): blocks\.0\.ffn\.0\.bias "
        r"\(checkpoint \(128,\), model \(96,\)\)",
    ):
        load_causal_wan(tmp_path / "extra.safetensors", config=wrong, strict=False)

    torch.save({"critic": state, "step": 3}, tmp_path / "critic_only.pt")
    with pytest.raises(ValueError, match="generator.*'critic', 'step'"):
        load_causal_wan(tmp_path / "critic_only.pt", config=WAN_TINY)

    save_file({"blocks.0.ffn.0.weight": torch.zeros(2, 2)}, tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="cannot infer.*patch_embedding.weight"):
        load_causal_wan(tmp_path / "junk.safetensors")
