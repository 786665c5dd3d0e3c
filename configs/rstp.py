"""RSTPReid (3,701 train identities; val and test splits of 200 identities each).

Usage: ``python -m tpsearch_jax.main --config=configs/rstp.py:irra --config.data.root=/data/RSTPReid --workdir=...``
"""

from __future__ import annotations

from tpsearch_jax.configs import base


def get_config(method: str = "irra"):
  """IRRA/FMFA recipe on RSTPReid; the checkpoint is selected on val R@1."""
  c = base.get_config(method)
  c.data.name = "rstp_reid"
  c.data.root = "data/RSTPReid"
  return c
