"""Shapes of the Wan2.1 text-to-video transformer (field names as in Wan's own ``config.json``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512  # prompts are zero-padded to this many tokens, as Wan does
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cross_attn_norm: bool = True  # affine LayerNorm ``norm3`` before cross-attention
    # What the head predicts: "velocity" (Wan) or "x0" (the clean latents; the model still
    # returns the velocity (x - x0) / max(sigma, 0.05)). x0 is needed when a token carries more
    # values than the model is wide (the pixel codec's 768 per token vs dim 256): a velocity
    # contains the full-dimensional noise, which a narrow model cannot pass through, while clean
    # world frames are simple (JiT, "Back to Basics: Let Denoising Generative Models Denoise").
    prediction: str = "velocity"
    # Width of a hidden layer in the output head (0: Wan's single linear map). A linear map from a
    # token's state to its 8x8 pixels cannot place a sharp edge anywhere inside the token; a
    # GELU layer can (docs/design.md §10).
    head_hidden: int = 0
    # Add a projection of the prompt's pooled text states (the mean over its non-padding tokens) to the
    # time embedding, so that every block's modulation and the head see the prompt as a whole (SD3's
    # pooled text vector); cross-attention alone binds global attributes weakly in a small model
    # (docs/design.md §10). Zero-initialised: adding it to a trained model changes nothing at first.
    text_pooled: bool = False
    # Add a learned function of each token's place in the frame (its row and column as fractions of the
    # frame, in sine/cosine features) to the patch embedding. RoPE gives attention relative positions
    # only: from pure noise a token cannot tell where in the frame it is, so a model cannot put an
    # object where its prompt implies (docs/design.md §10). Zero-initialised, like ``text_pooled``;
    # the same for every frame, so streaming is unchanged.
    absolute_position: bool = False
    # Condition the stream's first latent frame on a layout: the context holds ``text_len`` text states,
    # then one layout state per token of a frame (row-major), each projected (a zero-initialised linear
    # map without bias, so a zero state adds nothing) and added to that token. It says where each object
    # starts (world.layout: the prompt's place words, with the object's words on its cell), which a model
    # otherwise has to learn to read from text and draw from pure noise (docs/design.md §10).
    layout: bool = False
    # > 0: the layout is drawn, not given per cell: the objects where the prompt starts them, with each
    # token's pixels' coverage at this many pixels per token side (world.sketch_states); 0: the 3x3 cells.
    layout_sketch: int = 0

    def __post_init__(self):
        for name in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "text_dim",
            "freq_dim",
            "text_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WanConfig.{name} must be a positive int, got {value!r}")
        if self.text_len > 65536:  # prompts are padded to it: an absurd value would allocate it
            raise ValueError(f"WanConfig.text_len must be <= 65536, got {self.text_len}")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"WanConfig.patch_size must be 3 positive ints, got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head dim {self.head_dim} must be even and >= 6 (3-D RoPE)")
        if not isinstance(self.head_hidden, int) or isinstance(self.head_hidden, bool) or self.head_hidden < 0:
            raise ValueError(f"WanConfig.head_hidden must be an int >= 0, got {self.head_hidden!r}")
        for name in ("text_pooled", "absolute_position", "layout"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"WanConfig.{name} must be true or false, got {getattr(self, name)!r}")
        sketch = self.layout_sketch
        if not isinstance(sketch, int) or isinstance(sketch, bool) or sketch < 0 or (sketch and not self.layout):
            raise ValueError(f"WanConfig.layout_sketch must be an int >= 0, and 0 without a layout, got {sketch!r}")
        if self.prediction not in ("velocity", "x0"):
            raise ValueError(f"WanConfig.prediction must be 'velocity' or 'x0', got {self.prediction!r}")
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig.freq_dim must be even, got {self.freq_dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    def token_grid(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        """Rows and columns of tokens in a latent frame of ``latent_height x latent_width``."""
        _, ph, pw = self.patch_size
        if latent_height % ph or latent_width % pw:
            raise ValueError(f"a {latent_height}x{latent_width} latent frame does not tile into {ph}x{pw} patches")
        return latent_height // ph, latent_width // pw


WAN_1_3B = WanConfig()
WAN_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
# Random-weight test shapes: head dim 32 (RoPE split 12/10/10), Wan's 16 latent channels.
WAN_TINY = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32, text_len=8)
# The embedded default model (procedural world, docs/design.md §8): MiniLM text states (384 wide, 32 tokens)
# and the pixel codec's 192-channel latents (4 frames x 4x4 pixels x RGB); 4.7M parameters.
WAN_WORLD = WanConfig(
    dim=256,
    ffn_dim=768,
    num_heads=4,
    num_layers=4,
    in_dim=192,
    out_dim=192,
    text_dim=384,
    freq_dim=128,
    text_len=32,
    prediction="x0",
)
# WAN_WORLD with a GELU layer in the output head (head_hidden): sharper object edges (docs/design.md §10).
WAN_WORLD_MLP = dataclasses.replace(WAN_WORLD, head_hidden=1024)
# The random models a training config names instead of a checkpoint path.
NAMED_CONFIGS = {"tiny": WAN_TINY, "world": WAN_WORLD, "world-mlp": WAN_WORLD_MLP}
