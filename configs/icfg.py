"""ICFG-PEDES (3,102 train identities; a 1,000-identity test split and NO validation split).

Without a val split the checkpoint cannot be selected honestly, so this config makes the choice explicit:
``--config.eval.select_on=none`` trains for the full schedule and reports the last checkpoint;
``--config.eval.select_on=test`` reproduces the published protocol (best test R@1 — test-set selection).
Usage: ``python -m tpsearch_jax.main --config=configs/icfg.py:irra --config.eval.select_on=none
--config.data.root=/data/ICFG-PEDES --workdir=...``
"""

from __future__ import annotations

from tpsearch_jax.configs import base

# Per-method values on ICFG-PEDES: the FMFA paper's EFA margins (docs/methods.md §2.6) and 100 epochs (§4) [paper].
PER_METHOD = {
    "fmfa_paper": {"loss.efa_margin_t2e": 0.2, "loss.efa_margin_i2e": 1.0, "schedule.num_epochs": 100},
}


def get_config(method: str = "irra"):
  """IRRA/FMFA recipe on ICFG-PEDES; ``eval.select_on`` is unset and must be given ("none" or "test")."""
  c = base.get_config(method)
  base.apply_per_method(c, PER_METHOD, method, "configs/icfg.py")
  c.data.name = "icfg_pedes"
  c.data.root = "data/ICFG-PEDES"
  c.eval.select_on = None  # must be set: "none" or "test"
  c.eval.splits = ("test",)
  return c
