"""Search your own images with a trained model: the index library, the sharded top-k index, explanations, the result
grid, the web server and the CLI.

``python -m tpsearch_jax.search index|query|serve`` (``cli.py``); the names below are the library behind it.
"""

from tpsearch_jax.search.library import (FORMAT_VERSION, INDEX_EMB, INDEX_FOREGROUND, INDEX_META,  # noqa: F401
                                         INDEX_PATHS, INDEX_SKIPPED, INDEX_STATS, IMAGE_EXTENSIONS,
                                         BadIndex, FingerprintMismatch, build, find_images, fingerprint,
                                         load_pinned_run, load_run, read_index)
from tpsearch_jax.search.encoding import BadImages, encode_images, encode_texts, load_image  # noqa: F401
from tpsearch_jax.search.searcher import Hit, Searcher, query  # noqa: F401
