"""``python -m tpsearch_jax.checkpoints.convert``: the same CLI as ``python -m tpsearch_jax.models.clip.convert``."""

import sys

from tpsearch_jax.models.clip.convert import main

if __name__ == "__main__":
  sys.exit(main())
