"""Moved to ``tpsearch_jax.training.optim``; re-exported for existing imports."""

from tpsearch_jax.training.optim import *  # noqa: F401,F403
from tpsearch_jax.training.optim import __all__  # noqa: F401
