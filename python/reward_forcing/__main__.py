"""``python -m reward_forcing``: self-check of the streaming ops against the float64 oracle."""

from .functional import self_check

self_check()
