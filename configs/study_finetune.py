"""The method study from the pretraining stand-in: every run fine-tunes ``configs/synthetic_finetune.py:<preset>``
from the towers of ``configs/synthetic.py:pretrain``. Train that run first, at its default work directory:

    python -m tpsearch_jax.main --config=configs/synthetic.py:pretrain --workdir=/tmp/tpsearch_synthetic_pretrain
    python -m tpsearch_jax.study --config=configs/study_finetune.py:main --out=/tmp/study_ft        # 5 seeds
    python -m tpsearch_jax.study --config=configs/study_finetune.py:ladder --out=/tmp/study_ft       # 3 seeds
    python -m tpsearch_jax.study --config=configs/study_finetune.py:switches --out=/tmp/study_ft     # 3 seeds

- The three studies can share one ``--out``: their method names differ, and runs are paired by seed
  (``config.seed``).
- ``main`` holds the global methods and the two part presets.
- ``ladder`` holds the part ladder (global → + coarse → + parts → + foreground = pcc; fixed margin vs CMR), from
  ``configs/study_synthetic.py``.
- ``switches`` holds the repairs of the part objective (docs/part_model.md), one at a time over pcc, and all of them
  together.
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
_CANDIDATE = (("loss.id_pieces", "global"), ("model.embed_weights.global_", 12.0))
SWITCHES = (
    ("pcc_batch_hard", "pcc", _REPAIRS[:1]),
    ("pcc_batch_all", "pcc", (("loss.ranking_mining", "batch_all"),)),
    ("pcc_mean", "pcc", _REPAIRS[1:2]),
    ("pcc_kv_modality", "pcc", _REPAIRS[2:3]),
    ("pcc_fg_shifted", "pcc", _REPAIRS[3:4]),
    ("pcc_fg_stop", "pcc", _REPAIRS[4:5]),
    ("pcc_global_heavy", "pcc", (("model.embed_weights.global_", 12.0),)),  # global = the 6 coarse + 6 parts
    ("pcc_id_global", "pcc", (("loss.id_pieces", "global"),)),
    ("pcc_sdm_global", "pcc", (("loss.global_loss", "sdm"), ("loss.sdm", 1.0))),  # SDM instead of triplet on global
    ("pcc_mlm_ids", "pcc", (("data.caption_uses_mlm_ids", True),)),  # the base config's masked captions
    ("pcc_repaired", "pcc", _REPAIRS),
    ("combined_repaired", "combined", _REPAIRS),
    # The candidate part recipe of the first single-seed runs (docs/part_model.md): the ID term on the global
    # embedding only, and a global-heavy test score (global 12 = the 6 coarse + 6 part pieces together).
    ("pcc_candidate", "pcc", _CANDIDATE),
    ("combined_candidate", "combined", _CANDIDATE),
)
STUDIES = {
    "main": (("clip", "pcc_candidate", "fmfa", "combined_candidate", "irra", "pcc", "combined"), (0, 1, 2, 3, 4)),
    "ladder": (("pcc_global", "pcc_coarse", "pcc_parts", "pcc", "pcc_fixed_margin", "pcc_cmr_freq"), (0, 1, 2)),
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
  c.variants = tuple(ladder) + SWITCHES
  c.overrides = ()
  c.steps_per_epoch = 0
  c.reference = ("clip", "irra", "fmfa")  # the global methods: paired differences are to the best of them
  c.heldout_pool = HELDOUT_POOL
  return c
