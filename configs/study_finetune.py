"""The method study from the pretraining stand-in: every run fine-tunes ``configs/synthetic_finetune.py:<preset>``
from the towers of ``configs/synthetic.py:pretrain``. Train that run first, at its default work directory:

    python -m tpsearch_jax.main --config=configs/synthetic.py:pretrain --workdir=/tmp/tpsearch_synthetic_pretrain
    python -m tpsearch_jax.study --config=configs/study_finetune.py:main --out=/tmp/study_ft        # 5 seeds
    python -m tpsearch_jax.study --config=configs/study_finetune.py:ladder --out=/tmp/study_ft       # 3 seeds
    python -m tpsearch_jax.study --config=configs/study_finetune.py:switches --out=/tmp/study_ft     # 3 seeds

- The three studies can share one ``--out``: their method names differ, and runs are paired by seed
  (``config.seed``).
- ``main`` holds the global methods, the two part presets with the recommended part recipe (``pcc``, ``combined``:
  ``synthetic_finetune.PART_RECIPE``) and with the lineage values (``pcc_lineage``, ``combined_lineage``).
- ``ladder`` holds the part ladder (global → + coarse → + parts → + foreground = pcc_lineage; fixed margin vs
  CMR), from ``configs/study_synthetic.py``.
- ``switches`` holds the repairs of the part objective (docs/part_model.md), one at a time over pcc_lineage, and all
  of them together.
- Every run has the same steps.
"""

from __future__ import annotations

import os

import ml_collections

from tpsearch_jax.config_files import load_config_module

_HERE = os.path.dirname(os.path.abspath(__file__))
HELDOUT_POOL = "/tmp/tpsearch_data/heldout_pool"  # study.galleries: 440 unseen identities, generator seed 7
_REPAIRS = (("loss.ranking_mining", "batch_hard"), ("loss.ranking_reduction", "mean"),
            ("model.part.kv_norm", "modality"), ("model.part.foreground_features", "shifted"),
            ("model.part.foreground_grad", "stop"), ("loss.cmr_commonality", "freq"))
SWITCHES = (
    ("pcc_batch_hard", "pcc_lineage", _REPAIRS[:1]),
    ("pcc_batch_all", "pcc_lineage", (("loss.ranking_mining", "batch_all"),)),
    ("pcc_mean", "pcc_lineage", _REPAIRS[1:2]),
    ("pcc_kv_modality", "pcc_lineage", _REPAIRS[2:3]),
    ("pcc_fg_shifted", "pcc_lineage", _REPAIRS[3:4]),
    ("pcc_fg_stop", "pcc_lineage", _REPAIRS[4:5]),
    ("pcc_global_heavy", "pcc_lineage", (("model.embed_weights.global_", 12.0),)),  # global = 6 coarse + 6 parts
    ("pcc_id_global", "pcc_lineage", (("loss.id_pieces", "global"),)),
    ("pcc_sdm_global", "pcc_lineage", (("loss.global_loss", "sdm"), ("loss.sdm", 1.0))),  # SDM, not triplet, on global
    ("pcc_mlm_ids", "pcc_lineage", (("data.caption_uses_mlm_ids", True),)),  # the base config's masked captions
    ("pcc_repaired", "pcc_lineage", _REPAIRS),
    ("combined_repaired", "combined_lineage", _REPAIRS),
)
# The part ladder of configs/study_synthetic.py, over the lineage values (its variants are over the pcc preset).
_LINEAGE = {"pcc": "pcc_lineage", "combined": "combined_lineage"}
STUDIES = {
    "main": (("clip", "pcc", "fmfa", "combined", "irra", "pcc_lineage", "combined_lineage"), (0, 1, 2, 3, 4)),
    "ladder": (("pcc_global", "pcc_coarse", "pcc_parts", "pcc_lineage", "pcc_fixed_margin", "pcc_cmr_freq"),
               (0, 1, 2)),
    "switches": (tuple(name for name, _, _ in SWITCHES), (0, 1, 2)),
}
STUDIES["all"] = (tuple(dict.fromkeys(m for size in STUDIES for m in STUDIES[size][0])), (0, 1, 2, 3, 4))


def get_config(size: str = "main") -> ml_collections.ConfigDict:
  """The study ``size`` ("main" | "ladder" | "switches" | "all": every method of the three, for the summary):
  methods, variants, seeds over synthetic_finetune.py."""
  if size not in STUDIES:
    raise ValueError(f"study {size!r}: choose one of {', '.join(STUDIES)}")
  ladder = load_config_module(os.path.join(_HERE, "study_synthetic.py")).VARIANTS
  c = ml_collections.ConfigDict()
  c.size = size
  c.base_config = os.path.join(_HERE, "synthetic_finetune.py")
  c.methods, c.seeds = STUDIES[size]
  c.variants = tuple((name, _LINEAGE.get(preset, preset), over) for name, preset, over in ladder) + SWITCHES
  c.overrides = ()
  c.steps_per_epoch = 0
  c.reference = ("clip", "irra", "fmfa")  # the global methods: paired differences are to the best of them
  c.heldout_pool = HELDOUT_POOL
  return c
