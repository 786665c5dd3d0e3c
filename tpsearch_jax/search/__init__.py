"""Search your own images with a trained model: the index library, the sharded top-k index and the CLI.

``python -m tpsearch_jax.search index|query`` (``cli.py``); the functions below are the library behind it.
"""

from tpsearch_jax.search.library import (INDEX_EMB, INDEX_META, INDEX_PATHS, IMAGE_EXTENSIONS, build,  # noqa: F401
                                         encode_images, encode_texts, find_images, load_image, load_run, query)
