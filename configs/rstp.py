"""RSTPReid (3,701 train identities; val and test splits of 200 identities each).

Usage: ``python -m tpsearch_jax.main --config=configs/rstp.py:irra --config.data.root=/data/RSTPReid --workdir=...``
"""

from __future__ import annotations

from tpsearch_jax.configs import base

# Per-method values on RSTPReid: the FMFA paper's A-SDM α (docs/methods.md §2.5) and EFA margins (§2.6) [paper].
PER_METHOD = {
    "fmfa_paper": {"loss.asdm_alpha": 1.0, "loss.efa_margin_t2e": 0.2, "loss.efa_margin_i2e": 0.8},
}


def get_config(method: str = "irra"):
  """IRRA/FMFA recipe on RSTPReid; the checkpoint is selected on val R@1."""
  c = base.get_config(method)
  base.apply_per_method(c, PER_METHOD, method, "configs/rstp.py")
  c.data.name = "rstp_reid"
  c.data.root = "data/RSTPReid"
  return c
