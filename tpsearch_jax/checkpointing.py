"""Moved to ``tpsearch_jax.training.checkpointing``; re-exported for existing imports."""

from tpsearch_jax.training.checkpointing import *  # noqa: F401,F403
from tpsearch_jax.training.checkpointing import __all__  # noqa: F401
