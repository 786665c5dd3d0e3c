"""``python -m tpsearch_jax.benchmark [--preset=ci|small|full] [--methods=irra,...] [--out=F]``: the throughput
benchmark's entry point. The sections, presets and records live in ``tpsearch_jax.bench`` (see its docstring)."""

from __future__ import annotations

import sys

from tpsearch_jax.bench.cli import main, parse_args, run  # noqa: F401  (the CLI's public names)

if __name__ == "__main__":
  sys.exit(main())
