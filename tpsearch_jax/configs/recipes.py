"""Method recipes: what a method sets in the optimizer, schedule and data sections of the base config.

The base config (``configs/base.py``) is IRRA's recipe; ``RECIPES[method]`` lists only the fields a method sets
differently, as ``{"section.field": value}``; a method without an entry trains with the base recipe. The model and
loss side of a method is its preset (``tpsearch_jax/models/presets.py``). Provenance of every value: docs/methods.md.
"""

from __future__ import annotations

import copy

from tpsearch_jax.models.presets import METHODS
from tpsearch_jax.training.optim import NEW_MODULE_GROUPS, PAPER_GROUPS

# Park et al.'s backbones with the lineage recipe (docs/methods.md §3; LGUR train_mydecoder_pixelvit_txtimg_3_bert.py
# and option/options.py): Adam (0.9, 0.999, PyTorch eps 1e-8, no weight decay passed), lr 1e-3 with LGUR's groups
# (BERT frozen, image backbone and part model 1e-4, projections and classifier 1e-3), MultiStepLR ×0.1 at 20/40/50
# without warm-up, 60 epochs, batch 64 (the base), captions of up to 100 BERT word pieces (LGUR caption_length_max),
# unmasked.
PAPER_RECIPE = {"optim.lr": 1e-3, "optim.eps": 1e-8, "optim.weight_decay": 0.0, "optim.lr_factor": 0.1,
                "optim.param_groups": PAPER_GROUPS, "schedule.name": "step", "schedule.milestones": (20, 40, 50),
                "schedule.gamma": 0.1, "schedule.warmup_epochs": 0, "data.tokenizer": "bert",
                "data.context_length": 100, "data.caption_uses_mlm_ids": False}

# method → {"section.field": value} over the base config
RECIPES = {
    # FMFA as released (yinhao1102/FMFA d0a3403, run.sh): every parameter at lr 5e-6, wd 4e-5 (groups commented out).
    "fmfa": {"optim.lr": 5e-6, "optim.param_groups": ()},
    # Park et al.'s part model on CLIP: IRRA's recipe with ×lr_factor for every new module (our choice); unmasked
    # captions, as it has no MLM term (IRRA's masked-caption aliasing is no part of Park et al.'s method).
    "pcc": {"optim.param_groups": NEW_MODULE_GROUPS, "data.caption_uses_mlm_ids": False},
    "combined": {"optim.param_groups": NEW_MODULE_GROUPS},
    # Park et al. as published: the lineage recipe, with each image backbone's normalisation.
    "pcc_paper_vit": dict(PAPER_RECIPE, **{"data.normalization": "half"}),
    "pcc_paper_rn50": dict(PAPER_RECIPE, **{"data.normalization": "imagenet"}),
}


def method_recipe(name: str) -> dict:
  """Method name → its recipe overrides {"section.field": value} (empty: the base recipe); a fresh dict."""
  unknown = sorted(set(RECIPES) - set(METHODS))
  if unknown:
    raise ValueError(f"configs/recipes.py: recipes for unknown method(s) {unknown}; known: {METHODS}")
  return copy.deepcopy(RECIPES.get(name, {}))
