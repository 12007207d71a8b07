"""A VLM video reward (VideoAlign / VideoReward style, docs/design.md §5): a Qwen2-VL backbone whose last
hidden states at special reward tokens (``<|VQ_reward|>``, ``<|MQ_reward|>``, ``<|TA_reward|>``)
go through a linear ``rm_head``; the score used for Re-DMD (motion quality, ``MQ``, by default) is
z-normalised with FIXED constants stored with the checkpoint, never batch statistics.

Loaded from a LOCAL folder with transformers (never a hub download)::

    <path>/
      config.json              Qwen2VLConfig (a ``save_pretrained`` folder of
      model*.safetensors       Qwen2VLForConditionalGeneration; sharded files are fine)
      tokenizer.json, tokenizer_config.json, ...   the tokenizer (AutoTokenizer), which knows the
                               reward tokens
      rm_head.safetensors      key ``weight`` [K, hidden] (K = 1, or one row per reward token);
                               optional when a ``*.safetensors`` file of the folder holds a key
                               ending in ``rm_head.weight`` (VideoAlign's full fine-tunes)
      reward_config.json       {"inference_config": {"MQ_mean": .., "MQ_std": .., ...},
                                "reward_tokens": ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"],
                                "score": "MQ",                       (optional, default MQ)
                                "prompt_template": "... {prompt} ... <|VQ_reward|> ...",  (optional)
                                "caption": "...",                    (optional, the {prompt} text)
                                "num_frames": 8, "min_pixels": .., "max_pixels": ..}  (optional)
                               ``inference_config`` may instead sit in config.json.

LoRA checkpoints (VideoAlign's ``adapter_model.safetensors`` + ``non_lora_state_dict``) must be
merged into the base weights first (e.g. ``peft``'s ``merge_and_unload`` then
``save_pretrained``); this loader does not merge them.

Videos are preprocessed as Qwen2-VL's video processor does (frames resized to multiples of 28
with the processor's ``smart_resize``, CLIP mean/std, temporal patches of 2, flattened patches in
its merge order), written here in torch because the official video processor needs torchvision.
Each video is scored in its own forward pass (no padding), so a sample's score does not depend on
the rest of the batch. With ``rm_head`` of K rows and K reward tokens, token k reads row k
(VideoAlign's special-token head); with one row every token reads it.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .rewards import Reward

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
DEFAULT_TEMPLATE = (
    "<|vision_end|>Rate the video generated from the prompt: {prompt}. "
    "Visual quality <|VQ_reward|> motion quality <|MQ_reward|> "
    "text alignment <|TA_reward|><|im_end|>"
)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, area within the pixel range."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def video_patches(
    video: np.ndarray,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
    num_frames: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[F, H, W, 3]`` -> (``pixel_values_videos [T*h*w, 3*tp*p*p]``, ``grid_thw [1, 3]``)
    in Qwen2-VL's layout. ``num_frames`` subsamples uniformly first."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float() / 255
    if num_frames is not None and len(frames) > num_frames:
        frames = frames[torch.linspace(0, len(frames) - 1, num_frames).round().long()]
    if pad := -len(frames) % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    height, width = frames.shape[2:]
    h, w = smart_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    if (h, w) != tuple(frames.shape[2:]):
        frames = F.interpolate(frames, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    frames = (frames - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    t, c = len(frames) // temporal_patch_size, frames.shape[1]
    gh, gw = h // patch_size, w // patch_size
    p = frames.view(
        t, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size
    )
    p = p.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * gh * gw, c * temporal_patch_size * patch_size**2)
    return p, torch.tensor([[t, gh, gw]])


def _rm_head_weight(path: Path) -> torch.Tensor:
    from safetensors import safe_open

    if (path / "rm_head.safetensors").is_file():
        with safe_open(path / "rm_head.safetensors", "pt") as f:
            return f.get_tensor("weight")
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                if key.endswith("rm_head.weight"):
                    return f.get_tensor(key)
    raise FileNotFoundError(
        f"VLM reward: no rm_head in {path} (expected rm_head.safetensors or a "
        f"'rm_head.weight' key in a *.safetensors file)"
    )


class VLMReward(Reward):
    """``VLMReward(path)(videos) -> float32 [B]``: ``(raw - <score>_mean) / <score>_std`` with
    the checkpoint's ``inference_config`` constants (see the module doc for the folder layout)."""

    def __init__(self, path, device="cpu", dtype=torch.float32, caption: str | None = None):
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"VLM reward folder not found: {str(path)!r}")
        cfg_file = path / "reward_config.json"
        rcfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        inference = rcfg.get("inference_config")
        if inference is None and (path / "config.json").is_file():
            inference = json.loads((path / "config.json").read_text()).get("inference_config")
        self.score = rcfg.get("score", "MQ")
        if not inference or f"{self.score}_mean" not in inference or f"{self.score}_std" not in inference:
            raise ValueError(
                f"VLM reward: no inference_config with {self.score}_mean/{self.score}_std "
                f"in {cfg_file} or config.json (fixed normalisation constants are required)"
            )
        self.mean, self.std = float(inference[f"{self.score}_mean"]), float(inference[f"{self.score}_std"])
        if not self.std > 0:
            raise ValueError(f"VLM reward: {self.score}_std must be positive, got {self.std}")
        self.reward_tokens = list(rcfg.get("reward_tokens", REWARD_TOKENS))
        if f"<|{self.score}_reward|>" not in self.reward_tokens:
            raise ValueError(f"VLM reward: score {self.score!r} has no token among {self.reward_tokens}")
        self.template = rcfg.get("prompt_template", DEFAULT_TEMPLATE)
        self.caption = caption if caption is not None else rcfg.get("caption", "")
        self.num_frames, self.min_pixels = rcfg.get("num_frames"), rcfg.get("min_pixels", 56 * 56)
        self.max_pixels = rcfg.get("max_pixels", 14 * 14 * 4 * 1280)
        weight = _rm_head_weight(path)

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = Qwen2VLForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model = model.model.to(device).eval().requires_grad_(False)  # Qwen2VLModel: no lm_head
        config: Any = model.config  # transformers types it as a union
        self.config, self.device = config, torch.device(device)
        hidden = config.text_config.hidden_size
        if weight.ndim != 2 or weight.shape[1] != hidden or weight.shape[0] not in (1, len(self.reward_tokens)):
            raise ValueError(
                f"VLM reward: rm_head weight {tuple(weight.shape)} does not fit hidden size "
                f"{hidden} and {len(self.reward_tokens)} reward tokens"
            )
        self.rm_head = weight.to(self.device, torch.float32)
        self.token_ids = cast(list[int], self.tokenizer.convert_tokens_to_ids(self.reward_tokens))
        if any(i is None or i == self.tokenizer.unk_token_id for i in self.token_ids):
            raise ValueError(f"VLM reward: the tokenizer lacks reward tokens {self.reward_tokens}")
        self._row = self.reward_tokens.index(f"<|{self.score}_reward|>")

    def _ids(self, n_video_tokens: int) -> torch.Tensor:
        c = self.config
        text = self.template.format(prompt=self.caption)
        after = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        before = self.tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
        ids = before + [c.vision_start_token_id] + [c.video_token_id] * n_video_tokens + after
        # the template may start with <|vision_end|>; add it when it does not
        if after[:1] != [c.vision_end_token_id]:
            ids.insert(len(before) + 1 + n_video_tokens, c.vision_end_token_id)
        return torch.tensor([ids])

    @torch.no_grad()
    def scores(self, video: np.ndarray) -> dict[str, float]:
        """Every raw (un-normalised) score of one uint8 video ``[F, H, W, 3]``, by token name."""
        v = self.config.vision_config
        pixels, grid = video_patches(
            video,
            v.patch_size,
            v.spatial_merge_size,
            v.temporal_patch_size,
            self.min_pixels,
            self.max_pixels,
            self.num_frames,
        )
        ids = self._ids(int(grid.prod()) // v.spatial_merge_size**2).to(self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values_videos=pixels.to(self.device, self.model.dtype),
            video_grid_thw=grid.to(self.device),
            mm_token_type_ids=(ids == self.config.video_token_id).int() * 2,
        )
        hidden = out.last_hidden_state[0].float()
        result = {}
        for k, (name, tid) in enumerate(zip(self.reward_tokens, self.token_ids)):
            pos = (ids[0] == tid).nonzero()
            if len(pos) != 1:
                raise ValueError(f"VLM reward: the prompt holds {name} {len(pos)} times, expected once")
            row = self.rm_head[k if len(self.rm_head) > 1 else 0]
            result[name[2 : -len("_reward|>")]] = float(hidden[pos[0, 0]] @ row)
        return result

    def raw(self, video: np.ndarray) -> float:
        return self.scores(video)[self.score]
