"""``python -m tpsearch_jax.search``."""

from absl import app

from tpsearch_jax.search.cli import main

if __name__ == "__main__":
  app.run(main)
