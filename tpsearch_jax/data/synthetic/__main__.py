"""``python -m tpsearch_jax.data.synthetic --out=DIR [...]``: writes a synthetic_pedes folder (``generator.main``)."""

from __future__ import annotations

import sys

from tpsearch_jax.data.synthetic.generator import main

if __name__ == "__main__":
  main(sys.argv[1:])
