"""Loading Wan2.1 T2V transformer checkpoints into :class:`CausalWanModel` (docs/design.md §6).

Accepted, all from local paths:

* original Wan safetensors: one file, or a folder of ``diffusion_pytorch_model*.safetensors``
  (shards listed by ``diffusion_pytorch_model.safetensors.index.json`` when there is one);
* Self Forcing / Reward Forcing training checkpoints (``.pt``): a dict with ``generator_ema``
  and/or ``generator`` (or a bare state dict), keys with wrapper prefixes such as ``model.``;
* diffusers ``WanTransformer3DModel`` folders (``config.json`` + safetensors), or a diffusers
  pipeline folder with a ``transformer/`` subfolder; keys are converted to the Wan names.

Anything that does not fit the model exactly is a ``ValueError`` naming the missing, unexpected
and mis-shaped keys: never a partial load.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .causal_wan import CausalWanModel
from .wan_config import WanConfig

WEIGHTS_NAME = "diffusion_pytorch_model"
# Module wrappers (FSDP, activation checkpointing, torch.compile) insert these anywhere in a key.
_WRAPPER_SEGMENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"}
# Owners of the transformer in training code (e.g. WanDiffusionWrapper.model) prefix the keys.
_PREFIX_SEGMENTS = {"model", "module", "diffusion_model"}
# diffusers -> Wan, applied in order (diffusers' norm2 is the cross-attention norm Wan calls norm3;
# its other norms have no parameters).
_DIFFUSERS_TO_WAN = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.norm2\.", ".norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
]
WAN_HEAD_DIM = 128  # every Wan2.1 size; heads cannot be read off the weights (q/k norms span all heads)


# ----------------------------------------------------------------------------- reading
def _strip_wrappers(key: str) -> str:
    parts = [p for p in key.split(".") if p not in _WRAPPER_SEGMENTS]
    while len(parts) > 1 and parts[0] in _PREFIX_SEGMENTS:
        parts.pop(0)
    return ".".join(parts)


def diffusers_to_wan_key(key: str) -> str:
    for pattern, replacement in _DIFFUSERS_TO_WAN:
        key = re.sub(pattern, replacement, key)
    return key


def _weights_folder(folder: Path) -> Path:
    for d in (folder, folder / "transformer"):
        if any(d.glob(f"{WEIGHTS_NAME}*.safetensors")):
            return d
    raise FileNotFoundError(f"no {WEIGHTS_NAME}*.safetensors in {folder} (nor in {folder / 'transformer'})")


def _read_folder(folder: Path) -> dict:
    index = folder / f"{WEIGHTS_NAME}.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that do not exist: {', '.join(missing)}")
    else:
        files = sorted(folder.glob(f"{WEIGHTS_NAME}*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(f))
    return state


def read_checkpoint_file(path: Path) -> dict:
    """The dict in one weights file: a safetensors file, or a torch pickle (``.pt``/``.pth``, read
    with ``weights_only`` and memory-mapped). Anything but a dict raises ValueError."""
    if path.suffix == ".safetensors":
        return load_file(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def _read_training_checkpoint(path: Path, use_ema: bool) -> tuple[dict, WanConfig | None]:
    """The state dict, and the model config when the checkpoint records it (our trainer's
    ``model_configs``)."""
    ckpt = read_checkpoint_file(path)
    for name in ("generator_ema", "generator") if use_ema else ("generator",):
        if name in ckpt:
            config = (ckpt.get("model_configs") or {}).get(name)
            return ckpt[name], WanConfig(**config) if config else None
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, None
    raise ValueError(
        f"{path}: no {'generator_ema or ' if use_ema else ''}generator state dict; "
        f"top-level keys: {sorted(map(str, ckpt))}"
    )


def _config_hints(folder: Path | None) -> dict:
    """num_heads / eps / text_len from a ``config.json`` (Wan's or diffusers') next to the weights."""
    path = folder / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    cfg = json.loads(path.read_text())
    hints = {
        "num_heads": cfg.get("num_heads", cfg.get("num_attention_heads")),
        "eps": cfg.get("eps"),
        "text_len": cfg.get("text_len"),
    }
    return {k: v for k, v in hints.items() if v is not None}


def _read(path, use_ema: bool):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    folder, config = None, None
    if path.is_dir():
        folder = _weights_folder(path)
        state = _read_folder(folder)
    elif path.suffix == ".safetensors":
        state, config = load_file(path), safetensors_config(path)
    else:
        state, config = _read_training_checkpoint(path, use_ema)
    out = {}
    for key, value in state.items():
        new = _strip_wrappers(key)
        if new in out:
            raise ValueError(f"{path}: two keys become {new!r} once wrapper prefixes are removed")
        out[new] = value
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in out):
        out = {diffusers_to_wan_key(k): v for k, v in out.items()}
    return out, _config_hints(folder), config


def safetensors_config(path) -> WanConfig | None:
    """The WanConfig a safetensors file records in its metadata (``"config"``: our default-model
    files), or None."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        recorded = (f.metadata() or {}).get("config")
    if recorded is None:
        return None
    fields = json.loads(recorded)
    return WanConfig(**(fields | {"patch_size": tuple(fields["patch_size"])}))


def load_wan_state_dict(path, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The transformer weights at ``path`` (any format of the module docstring), in Wan naming.
    For training checkpoints ``use_ema`` prefers ``generator_ema`` over ``generator``."""
    return _read(path, use_ema)[0]


# ----------------------------------------------------------------------------- config + model
def infer_config(
    state_dict: dict, *, num_heads: int | None = None, eps: float = 1e-6, text_len: int = 512
) -> WanConfig:
    """The :class:`WanConfig` whose shapes the weights have. ``num_heads`` is not visible in them:
    it defaults to ``dim / 128`` (Wan's head dim)."""
    try:
        dim, in_dim, *patch = state_dict["patch_embedding.weight"].shape
        ffn_dim = state_dict["blocks.0.ffn.0.weight"].shape[0]
        text_dim = state_dict["text_embedding.0.weight"].shape[1]
        freq_dim = state_dict["time_embedding.0.weight"].shape[1]
        out_dim = state_dict["head.head.weight"].shape[0] // math.prod(patch)
    except (KeyError, ValueError) as e:
        raise ValueError(f"cannot infer the Wan config: the weights lack a usable {e}") from None
    layers = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if num_heads is None:
        if dim % WAN_HEAD_DIM:
            raise ValueError(
                f"dim={dim} is not a multiple of Wan's head dim {WAN_HEAD_DIM}: "
                "pass a config (or a config.json with num_heads)"
            )
        num_heads = dim // WAN_HEAD_DIM
    return WanConfig(
        dim=dim,
        ffn_dim=ffn_dim,
        num_heads=num_heads,
        num_layers=layers,
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=text_dim,
        freq_dim=freq_dim,
        text_len=text_len,
        patch_size=tuple(patch),
        eps=eps,
        cross_attn_norm="blocks.0.norm3.weight" in state_dict,
        text_pooled="text_pool.0.weight" in state_dict,
        absolute_position="position_embedding.weight" in state_dict,
        layout="layout_embedding.weight" in state_dict,
    )


def _names(keys: list[str], limit: int = 20) -> str:
    more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(model: torch.nn.Module, state_dict: dict, strict: bool = True) -> None:
    """Raises ValueError naming missing keys, unexpected keys (when ``strict``) and shape mismatches."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k])})"
        for k in sorted(expected.keys() & state_dict.keys())
        if tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    problems = [
        f"{what} ({len(keys)}): {_names(keys)}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected if strict else []),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise ValueError("checkpoint does not fit the model:\n  " + "\n  ".join(problems))


def load_causal_wan(
    path,
    config: WanConfig | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device="cpu",
    strict: bool = True,
    use_ema: bool = True,
) -> CausalWanModel:
    """A :class:`CausalWanModel` with the weights at ``path`` (config: given, else the one the
    file records (our trainer checkpoints and default-model files), else inferred from shapes).
    ``strict=False`` tolerates unexpected keys; missing keys and wrong shapes always raise."""
    state, hints, recorded = _read(path, use_ema)
    config = config or recorded or infer_config(state, **hints)
    blocks = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if config.num_layers > blocks or (strict and config.num_layers != blocks):
        # before building anything: a file claiming 10**7 layers must not hang the loader
        raise ValueError(f"{path}: the config has num_layers={config.num_layers}, the weights hold {blocks} blocks")
    with torch.device("meta"):
        model = CausalWanModel(config)
    try:
        check_state_dict(model, state, strict)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.load_state_dict(state, strict=strict, assign=True)
    return model.to(device=device, dtype=dtype)
