"""RSTPReid (3,701 train identities; val and test splits of 200 identities each).

Usage: ``python -m tpsearch_jax.main --config=configs/rstp.py:irra --config.data.root=/data/RSTPReid --workdir=...``
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
  """IRRA/FMFA recipe on RSTPReid; the checkpoint is selected on val R@1."""
  c = _default().get_config(method)
  c.data.name = "rstp_reid"
  c.data.root = "data/RSTPReid"
  return c
