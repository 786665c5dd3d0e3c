"""The shared base configuration (kept in the package as ``tpsearch_jax.configs.base``): ``configs/default.py:irra``."""

from __future__ import annotations

from tpsearch_jax.configs.base import get_config  # noqa: F401
