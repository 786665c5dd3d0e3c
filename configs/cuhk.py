"""CUHK-PEDES (11,003 train identities; val and test splits of 1,000 identities each).

Usage: ``python -m tpsearch_jax.main --config=configs/cuhk.py:irra --config.data.root=/data/CUHK-PEDES --workdir=...``
"""

from __future__ import annotations

from tpsearch_jax.configs import base

# Per-method values on CUHK-PEDES beyond the presets: none (fmfa_paper's preset carries the paper's CUHK values).
PER_METHOD: dict[str, dict] = {}


def get_config(method: str = "irra"):
  """IRRA/FMFA recipe on CUHK-PEDES; the checkpoint is selected on val R@1."""
  c = base.get_config(method)
  base.apply_per_method(c, PER_METHOD, method, "configs/cuhk.py")
  c.data.name = "cuhk_pedes"
  c.data.root = "data/CUHK-PEDES"
  return c
