"""ICFG-PEDES (3,102 train identities; a 1,000-identity test split and NO validation split).

Without a val split the checkpoint cannot be selected honestly, so this config makes the choice explicit:
``--config.eval.select_on=none`` trains for the full schedule and reports the last checkpoint;
``--config.eval.select_on=test`` reproduces the published protocol (best test R@1 — test-set selection).
Usage: ``python -m tpsearch_jax.main --config=configs/icfg.py:irra --config.eval.select_on=none
--config.data.root=/data/ICFG-PEDES --workdir=...``
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
  """IRRA/FMFA recipe on ICFG-PEDES; ``eval.select_on`` is unset and must be given ("none" or "test")."""
  c = _default().get_config(method)
  c.data.name = "icfg_pedes"
  c.data.root = "data/ICFG-PEDES"
  c.eval.select_on = None  # must be set: "none" or "test"
  c.eval.splits = ("test",)
  return c
