"""``python -m tpsearch_jax.search``."""

from absl import app, logging

from tpsearch_jax import user_errors
from tpsearch_jax.search.cli import main, parse_flags


def _main(argv) -> None:
  status = main(argv)
  logging.flush()
  user_errors.exit_process(status or 0)


if __name__ == "__main__":
  app.run(_main, flags_parser=parse_flags)
