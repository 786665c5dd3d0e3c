"""Moved to ``tpsearch_jax.search.index``; re-exported for existing imports."""

from tpsearch_jax.search.index import *  # noqa: F401,F403
from tpsearch_jax.search.index import __all__  # noqa: F401
