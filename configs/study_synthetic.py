"""The method study on synthetic_pedes: every preset and the part-model ablations, same budget, 3 seeds.

    python -m tpsearch_jax.study --config=configs/study_synthetic.py --out=/tmp/study_out              # 2-core CPU
    python -m tpsearch_jax.study --config=configs/study_synthetic.py:accelerator --out=/tmp/study_big  # GPU / TPU

Every run is ``configs/synthetic.py:<preset>`` (its small-scale recipe: 1,000 identities, towers of width 128, 96×32
images, the identity-balanced sampler, lr 1e-3) with ``OVERRIDES[size]`` on top, and for an ablation the variant's overrides of
``pcc`` (``VARIANTS``: data, not code). The published per-method optimizer values (FMFA's lr 5e-6 and single group,
the pcc groups) are replaced by the one small-scale recipe, so that every method gets the same budget and optimizer
from random init; only objectives and architecture differ. Sizes: "cpu" (the study of docs/study_synthetic.md),
"cpu_lr3e3" (the first study: lr 3e-3 on 200 identities) and "cpu_lr3e3_long" (4× its steps, one seed),
"accelerator" (larger data and towers, more steps; not run here), "tiny" (the driver's test).
"""

from __future__ import annotations

import os

import ml_collections

METHODS = ("clip", "irra", "fmfa", "fmfa_paper", "pcc", "combined",
           "pcc_global", "pcc_coarse", "pcc_parts", "pcc_fixed_margin", "pcc_cmr_freq")

# name → (preset, (("section.field", value), ...)); the pcc ladder: global only → + coarse → + parts → + foreground
# (= pcc), and the part ranking term: fixed margin (CMR with floor = margin) vs CMR with classifier-probability
# ("prob", = pcc) or in-batch frequency ("freq") commonality.
VARIANTS = (
    ("pcc_global", "pcc", (("model.use_parts", False), ("loss.cmr", 0.0))),
    ("pcc_coarse", "pcc", (("loss.cmr", 0.0), ("model.embed_weights.part", 0.0), ("model.part.foreground", False))),
    ("pcc_parts", "pcc", (("model.part.foreground", False),)),
    ("pcc_fixed_margin", "pcc", (("loss.cmr_floor", 0.2),)),
    ("pcc_cmr_freq", "pcc", (("loss.cmr_commonality", "freq"),)),
)

# Every run of the study, over configs/synthetic.py. One optimizer for all methods (see the module docstring).
_SAME_RECIPE = (("optim.lr", 1e-3), ("optim.param_groups", ()), ("optim.eps", 1e-8), ("optim.weight_decay", 4e-5))
_SMALL_TOWERS = (("model.clip.embed_dim", 64), ("model.clip.vision_width", 64), ("model.clip.text_width", 64),
                 ("train.batch_size", 32))
# The first study (docs/study_synthetic.md §5): lr 3e-3 on the earlier 200-identity data (160 / 20 / 20).
_FIRST_STUDY = (("optim.lr", 3e-3), ("data.root", "/tmp/tpsearch_data/synthetic_pedes"),
                ("data.synthetic", dict(num_ids=200, images_per_id=4, seed=0, image_size=(144, 48),
                                        split_fractions=(0.8, 0.1, 0.1))))
OVERRIDES = {
    # Towers of width 64 (configs/synthetic.py: 128), batch 32 (8 ids × 4), 2 epochs of the 1,000 identities
    # (482 steps): 33 runs in about an hour on 2 cores.
    "cpu": _SAME_RECIPE + _SMALL_TOWERS + (("schedule.num_epochs", 2), ("eval.every_epochs", 1),
                                           ("train.log_every_steps", 60)),
    "cpu_lr3e3": _SAME_RECIPE + _SMALL_TOWERS + _FIRST_STUDY + (
        ("schedule.num_epochs", 4), ("eval.every_epochs", 1), ("train.log_every_steps", 41)),
    "cpu_lr3e3_long": _SAME_RECIPE + _SMALL_TOWERS + _FIRST_STUDY + (
        ("schedule.num_epochs", 16), ("eval.every_epochs", 2), ("train.log_every_steps", 82)),
    "accelerator": _SAME_RECIPE + (
        ("data.synthetic", dict(num_ids=2000, images_per_id=6, seed=0, image_size=(192, 64))),
        ("data.root", "/tmp/tpsearch_data/synthetic_pedes_2000"),
        ("data.image_size", (192, 64)), ("model.clip.vision_layers", 6), ("model.clip.text_layers", 6),
        ("model.clip.embed_dim", 256), ("model.clip.vision_width", 256), ("model.clip.text_width", 256),
        ("schedule.num_epochs", 30), ("schedule.warmup_epochs", 3), ("eval.every_epochs", 2),
        ("train.batch_size", 128), ("eval.batch_size", 512)),
    "tiny": _SAME_RECIPE + (
        ("data.synthetic", dict(num_ids=16, images_per_id=2, seed=0, image_size=(48, 16),
                                split_fractions=(0.5, 0.25, 0.25))),
        ("data.image_size", (48, 16)), ("data.context_length", 24), ("model.clip.context_length", 24),
        ("model.clip.embed_dim", 32), ("model.clip.vision_width", 32), ("model.clip.text_width", 32),
        ("model.clip.vision_layers", 1), ("model.clip.text_layers", 1), ("model.part.num_parts", 3),
        ("model.part.num_queries", 2), ("train.batch_size", 8), ("eval.batch_size", 16), ("schedule.num_epochs", 2),
        ("schedule.warmup_epochs", 0), ("eval.every_epochs", 1), ("train.log_every_steps", 5),
        ("train.async_checkpointing", False)),
}


def get_config(size: str = "cpu") -> ml_collections.ConfigDict:
  """The study of ``size`` ("cpu" | "accelerator" | "tiny"): methods, variants, seeds, overrides, base config file."""
  if size not in OVERRIDES:
    raise ValueError(f"study size {size!r}: choose one of {', '.join(OVERRIDES)}")
  c = ml_collections.ConfigDict()
  c.size = size
  c.base_config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.py")
  c.methods = METHODS
  c.variants = VARIANTS
  c.seeds = (0, 1, 2)
  c.overrides = OVERRIDES[size]
  c.steps_per_epoch = 0  # 0: the plot's x axis in steps
  return c
