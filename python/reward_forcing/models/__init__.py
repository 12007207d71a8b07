"""The causal Wan2.1 transformer, its configs and checkpoint loading."""

from .causal_wan import CausalWanModel, TextKV
from .loading import infer_config, load_causal_wan, load_wan_state_dict
from .wan_config import WAN_1_3B, WAN_14B, WAN_TINY, WanConfig

__all__ = [
    "CausalWanModel",
    "TextKV",
    "WAN_1_3B",
    "WAN_14B",
    "WAN_TINY",
    "WanConfig",
    "infer_config",
    "load_causal_wan",
    "load_wan_state_dict",
]
