"""GPU memory budget of streaming, per configuration, computed exactly from the tensors we allocate.

    python bench/memory.py [--out bench/results]

Everything is built on the meta device (no weights, no GPU): the transformer, the streaming cache
the pipeline allocates (ring of sink + window + chunk frames in bf16, EMA sink in ``--sink-dtype``),
the per-prompt cross-attention K/V, UMT5-XXL, the Wan2.1 VAE and the temporal feature cache its
streaming decoder keeps between chunks (measured by decoding two chunks on meta tensors). The sum is
what stays resident;
the workspace of one forward and of the VAE decode comes on top and is measured on a GPU by
``bench/e2e.py`` (``peak_memory_gib``, DiT + VAE, text encoder excluded).

Writes ``memory-computed.json`` and ``memory-computed.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from reward_forcing.models.causal_wan import CausalWanModel
from reward_forcing.models.wan_config import WAN_1_3B, WAN_14B

GIB = 2**30
BF16 = 2


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def umt5_xxl_bytes() -> int:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    with torch.device("meta"):
        encoder = UMT5EncoderModel(config)
    return sum(p.numel() for p in encoder.parameters()) * BF16  # embed_tokens is tied to shared


def wan_vae_bytes(height: int, width: int, chunk: int) -> tuple[int, int] | None:
    """(Wan2.1 VAE weights, the streaming decoder's temporal cache after two chunks), bf16."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        return None
    from reward_forcing.models.vae import StreamingVAEDecoder

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its "keep in float32" notice on .to(): none here
    with torch.device("meta"):
        vae = AutoencoderKLWan().to(torch.bfloat16)
    decoder = StreamingVAEDecoder(vae)
    for _ in range(2):
        decoder.decode(torch.zeros(1, 16, chunk, height // 8, width // 8, device="meta"))
    cache = [t for t in decoder.state_dict()["feat_cache"] if torch.is_tensor(t)]
    return tensor_bytes(vae.parameters()), tensor_bytes(cache)


def budget(
    name: str, config, *, height: int, width: int, sink: int, window: int, chunk: int, sink_dtype: torch.dtype
) -> dict:
    with torch.device("meta"):
        model = CausalWanModel(config).to(torch.bfloat16)
    ph, pw = config.patch_size[1:]
    cache = model.new_cache(
        1,
        height // 8 // ph,
        width // 8 // pw,
        sink_frames=sink,
        window_frames=window,
        chunk_frames=chunk,
        sink_dtype=sink_dtype,
        device="meta",
        backend="reference",
    )
    text_kv = config.num_layers * 2 * config.text_len * config.dim * BF16
    row = dict(
        config=name,
        height=height,
        width=width,
        sink_frames=sink,
        window_frames=window,
        chunk_frames=chunk,
        sink_dtype=str(sink_dtype).removeprefix("torch."),
        transformer_gib=tensor_bytes(model.parameters()) / GIB,
        kv_ring_gib=tensor_bytes([cache.k, cache.v]) / GIB,
        ema_sink_gib=tensor_bytes([cache.sink_k, cache.sink_v]) / GIB,
        text_kv_gib=text_kv / GIB,
    )
    row["resident_gib"] = row["transformer_gib"] + row["kv_ring_gib"] + row["ema_sink_gib"] + row["text_kv_gib"]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    setting = dict(height=480, width=832, sink=3, window=3, chunk=3)
    rows = [
        budget(name, cfg, **setting, sink_dtype=dtype)
        for name, cfg in (("Wan-1.3B", WAN_1_3B), ("Wan-14B", WAN_14B))
        for dtype in (torch.float32, torch.bfloat16)
    ]
    vae = wan_vae_bytes(setting["height"], setting["width"], setting["chunk"]) or (0, 0)
    extra = dict(
        umt5_xxl_gib=umt5_xxl_bytes() / GIB, wan_vae_gib=vae[0] / GIB or None, vae_decode_cache_gib=vae[1] / GIB or None
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-computed.json").write_text(json.dumps(dict(rows=rows, **extra), indent=1))
    vae = (extra["wan_vae_gib"] or 0.0) + (extra["vae_decode_cache_gib"] or 0.0)
    lines = [
        "| model | sink dtype | transformer | KV ring | EMA sink | text K/V | DiT resident | + VAE "
        "| + UMT5-XXL on GPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['sink_dtype']} | {r['transformer_gib']:.2f} | "
            f"{r['kv_ring_gib']:.2f} | {r['ema_sink_gib']:.2f} | {r['text_kv_gib']:.2f} | "
            f"{r['resident_gib']:.2f} | {r['resident_gib'] + vae:.2f} | "
            f"{r['resident_gib'] + vae + extra['umt5_xxl_gib']:.2f} |"
        )
    note = (
        f"GiB, bf16 weights, batch 1, 480x832, sink/window/chunk = 3/3/3 latent frames. UMT5-XXL "
        f"(bf16) = {extra['umt5_xxl_gib']:.2f} GiB; + VAE = its weights "
        f"({extra['wan_vae_gib'] or 0:.2f}) and its streaming decoder's temporal cache "
        f"({extra['vae_decode_cache_gib'] or 0:.2f}). Forward and VAE-decode workspace not "
        "included (bench/e2e.py measures the peak on a GPU)."
    )
    (args.out / "memory-computed.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    print("\n".join(lines) + "\n\n" + note)


if __name__ == "__main__":
    main()
