"""``python -m tpsearch_jax.search``."""

from absl import app

from tpsearch_jax.search.cli import main, parse_flags

if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
