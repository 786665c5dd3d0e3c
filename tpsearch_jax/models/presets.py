"""Method presets: each method is what it changes in the model options and loss weights, not a separate code path.

The defaults live in the option dataclasses (``ModelOptions``, ``PartOptions``, ``EmbedWeights``,
``objectives.LossOptions``); a preset lists only what its method sets differently. ``method_preset(name)`` →
``{"model": {...}, "loss": {...}}``: the full model and loss sections (defaults + overrides) that the base config
copies into ``config.model`` / ``config.loss``. A method's optimizer, schedule and data settings are its recipe, in the
config layer (``tpsearch_jax/configs/recipes.py``); dataset configs (``configs/<dataset>.py``) then apply their
per-method table (e.g. FMFA paper margins and epochs on ICFG-PEDES). Provenance of every value: docs/methods.md.
"""

from __future__ import annotations

import copy
import dataclasses

from tpsearch_jax.models.retrieval import ModelOptions
from tpsearch_jax.objectives import LossOptions

_PARTS = dict(use_parts=True)
_PAPER_LOSSES = dict(id=1.0, triplet=1.0, cmr=1.0)

# name → (model overrides, loss overrides); the recipe of each method: tpsearch_jax/configs/recipes.py
_METHODS = {
    # CLIP fine-tuning with SDM on the CLS / EOT features, IRRA's recipe.
    "clip": ({}, dict(sdm=1.0)),
    # IRRA (anosorae/IRRA @cfc2378): SDM + ID + MLM through the cross-former, all weight 1; the base recipe is IRRA's.
    "irra": ({}, dict(sdm=1.0, id=1.0, mlm=1.0)),
    # FMFA as released (yinhao1102/FMFA HEAD d0a3403, run.sh): A-SDM α 0.1 with the raw-cosine gap, EFA margins
    # 0.1/0.9, LSE t 1, released EFA arithmetic; its recipe: every parameter at lr 5e-6 with wd 4e-5.
    "fmfa": ({}, dict(asdm=1.0, id=1.0, mlm=1.0, efa=1.0)),
    # FMFA paper (arXiv 2509.13754): A-SDM Eq. 2 (α 10, probability gap); EFA with the paper's arithmetic, λ = 1 and
    # the CUHK margins (configs/icfg.py, rstp.py set theirs); IRRA's optimizer, groups and schedule (the base recipe).
    "fmfa_paper": ({}, dict(asdm=1.0, id=1.0, mlm=1.0, efa=1.0, asdm_alpha=10.0, asdm_gap="prob",
                            efa_margin_t2e=0.1, efa_margin_i2e=0.1, efa_lse_temperature=1.0, efa_arithmetic="paper")),
    # Park et al. (arXiv 2501.00318): max-pooled global + shared-decoder coarse + stripe parts; ID + triplet + CMR.
    # Recipe: IRRA's, with ×lr_factor for every new module (our choice; the paper's optimizer is not used here).
    "pcc": (dict(_PARTS, global_pool="max"), dict(id=1.0, triplet=1.0, cmr=1.0)),
    # FMFA objectives on the CLS / EOT global embedding + the part model: triplet on the coarse embeddings
    # (global_loss "sdm" keeps the global embedding out of it), CMR on the parts. Recipe as pcc.
    "combined": (dict(_PARTS), dict(asdm=1.0, id=1.0, mlm=1.0, efa=1.0, triplet=1.0, cmr=1.0, global_loss="sdm")),
    # Park et al. as published [S]: BERT-base-uncased + ImageNet ViT-B/16 (24×8 patch grid at 384×128), projected to
    # E = 512; the pcc part model and losses; the lineage recipe (configs/recipes.py PAPER_RECIPE).
    "pcc_paper_vit": (dict(_PARTS, global_pool="max", backbone="vit_bert"), _PAPER_LOSSES),
    # The same with ResNet-50 (frozen BatchNorm statistics), last stride 1: a 24×8 map at 384×128.
    "pcc_paper_rn50": (dict(_PARTS, global_pool="max", backbone="rn50_bert", resnet=dict(last_stride=1)),
                       _PAPER_LOSSES),
}

METHODS = tuple(_METHODS)


def model_defaults() -> dict:
  """``config.model`` keys the method decides, with the dataclass defaults (num_classes and name excluded)."""
  d = dataclasses.asdict(ModelOptions())
  d.pop("num_classes")
  d.pop("name")
  return d


def loss_defaults() -> dict:
  """Every ``config.loss`` key with its ``LossOptions`` default."""
  return dataclasses.asdict(LossOptions())


def method_overrides(name: str) -> tuple[dict, dict]:
  """Method name → (model overrides, loss overrides): only what differs from the defaults."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
  return copy.deepcopy(_METHODS[name])


def method_preset(name: str) -> dict:
  """Method name → {"model": dict (incl. "name"), "loss": dict}: defaults + the method's overrides; fresh dicts on
  every call."""
  model_over, loss_over = method_overrides(name)
  model = model_defaults()
  for key, value in model_over.items():  # nested sections (part, resnet, ...) are updated, not replaced
    if isinstance(value, dict) and isinstance(model.get(key), dict):
      model[key].update(value)
    else:
      model[key] = value
  model["name"] = name
  return {"model": model, "loss": dict(loss_defaults(), **loss_over)}


def tiny_model_config(method: str, num_classes: int = 8, vocab_size: int = 49408, dtype: str = "float32") -> dict:
  """{"model", "loss"} for a small test model of ``method``: 48×16 images, patch 8 (6×2 grid), E = 16, 3 parts.

  The paper backbones get tiny towers too: BERT width 32 (vocab ``min(vocab_size, 512)``, 128 positions), ViT width
  32 / patch 8, ResNet stem 8, widths 16/32/64, one block per stage (last stride 1: a 3×1 map at 48×16).
  """
  preset = method_preset(method)
  model = preset["model"]
  model.update(
      clip=dict(embed_dim=16, image_size=(48, 16), patch_size=8, vision_width=32, vision_layers=2, vision_heads=4,
                context_length=77, vocab_size=vocab_size, text_width=32, text_layers=2, text_heads=4),
      dtype=dtype, remat=False, attention_impl=None, num_classes=num_classes, cross_layers=2, cross_heads=4)
  model["part"].update(num_queries=3, num_parts=3, heads=4)
  model.update(embed_dim=16)
  model["bert"].update(vocab_size=min(vocab_size, 512), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                       max_position_embeddings=128)
  model["vit"].update(patch_size=8, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
  model["resnet"].update(embedding_size=8, hidden_sizes=(16, 32, 64), depths=(1, 1, 1))
  return {"model": model, "loss": preset["loss"]}
