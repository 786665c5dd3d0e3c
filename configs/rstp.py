"""RSTPReid (3,701 train identities; val and test splits of 200 identities each).

Usage: ``python -m tpsearch_jax.main --config=configs/rstp.py:irra --config.data.root=/data/RSTPReid --workdir=...``
"""

from __future__ import annotations

from tpsearch_jax.config_files import base_config


def get_config(method: str = "irra"):
  """IRRA/FMFA recipe on RSTPReid; the checkpoint is selected on val R@1."""
  c = base_config(__file__, method)
  c.data.name = "rstp_reid"
  c.data.root = "data/RSTPReid"
  return c
