"""CUHK-PEDES (11,003 train identities; val and test splits of 1,000 identities each).

Usage: ``python -m tpsearch_jax.main --config=configs/cuhk.py:irra --config.data.root=/data/CUHK-PEDES --workdir=...``
"""

from __future__ import annotations

import importlib.util
import os


def _default():
  """configs/default.py next to this file, importable whatever the working directory."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  spec = importlib.util.spec_from_file_location("tpsearch_configs_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(method: str = "irra"):
  """IRRA/FMFA recipe on CUHK-PEDES; the checkpoint is selected on val R@1."""
  c = _default().get_config(method)
  c.data.name = "cuhk_pedes"
  c.data.root = "data/CUHK-PEDES"
  return c
