"""Method presets: each method is a set of model options and loss weights, not a separate code path.

``method_preset(name)`` → ``{"model": {...}, "loss": {...}}`` with every ``config.model`` key the method decides
(except the backbone, dtype and num_classes) and every ``config.loss`` key. Dataset configs override the dataset-
specific values (e.g. FMFA paper margins: CUHK 0.1/0.1, ICFG 0.2/1.0, RSTP 0.2/0.8; A-SDM α 1 on RSTPReid).
"""

from __future__ import annotations

import copy

_LOSS_DEFAULTS = dict(
    sdm=0.0, asdm=0.0, itc=0.0, id=0.0, mlm=0.0, efa=0.0, triplet=0.0, cmr=0.0,
    logit_scale=50.0, asdm_alpha=0.1, asdm_gap="cosine",
    efa_margin_t2e=0.1, efa_margin_i2e=0.9, efa_lse_temperature=1.0, efa_mask_padding=False,
    triplet_margin=0.2, cmr_margin=0.2, cmr_floor=0.05, cmr_commonality="prob", cmr_tau=0.5, global_loss="triplet")

_MODEL_DEFAULTS = dict(
    global_pool="token", use_parts=False, cross_layers=4, cross_heads=8,
    part=dict(num_queries=6, num_parts=6, encoder_layers=1, decoder_layers=1, heads=8, foreground=True),
    embed_weights=dict(global_=1.0, coarse=1.0, part=1.0))

_PARTS = dict(use_parts=True)

# name → (model overrides, loss overrides)
_METHODS = {
    # CLIP fine-tuning with SDM on the CLS / EOT features.
    "clip": ({}, dict(sdm=1.0)),
    # IRRA (anosorae/IRRA): SDM + ID + MLM through the cross-former, all weight 1.
    "irra": ({}, dict(sdm=1.0, id=1.0, mlm=1.0)),
    # FMFA as released (yinhao1102/FMFA HEAD): A-SDM α 0.1 with the raw-cosine gap, EFA margins 0.1/0.9, LSE t 1.
    "fmfa": ({}, dict(asdm=1.0, id=1.0, mlm=1.0, efa=1.0)),
    # FMFA paper (arXiv 2509.13754): A-SDM α 10 with the probability gap; EFA margins are the CUHK values.
    "fmfa_paper": ({}, dict(asdm=1.0, id=1.0, mlm=1.0, efa=1.0, asdm_alpha=10.0, asdm_gap="prob",
                            efa_margin_t2e=0.1, efa_margin_i2e=0.1, efa_lse_temperature=1.0)),
    # Park et al. (arXiv 2501.00318): max-pooled global + shared-decoder coarse + stripe parts; ID + triplet + CMR.
    "pcc": (dict(_PARTS, global_pool="max"), dict(id=1.0, triplet=1.0, cmr=1.0)),
    # FMFA objectives on the CLS / EOT global embedding + the part model: triplet on the coarse embeddings
    # (global_loss "sdm" keeps the global embedding out of it), CMR on the parts.
    "combined": (dict(_PARTS, global_pool="token"),
                 dict(asdm=1.0, id=1.0, mlm=1.0, efa=1.0, triplet=1.0, cmr=1.0, global_loss="sdm")),
}

METHODS = tuple(_METHODS)


def method_preset(name: str) -> dict:
  """Method name → {"model": dict (incl. "name"), "loss": dict}; fresh dicts on every call."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
  model_over, loss_over = _METHODS[name]
  model = copy.deepcopy(_MODEL_DEFAULTS)
  model.update(copy.deepcopy(model_over), name=name)
  loss = dict(_LOSS_DEFAULTS, **loss_over)
  return {"model": model, "loss": loss}


def tiny_model_config(method: str, num_classes: int = 8, vocab_size: int = 49408, dtype: str = "float32") -> dict:
  """{"model", "loss"} for a small test model of ``method``: 48×16 images, patch 8 (6×2 grid), E = 16, 3 parts."""
  preset = method_preset(method)
  model = preset["model"]
  model.update(
      clip=dict(embed_dim=16, image_size=(48, 16), patch_size=8, vision_width=32, vision_layers=2, vision_heads=4,
                context_length=77, vocab_size=vocab_size, text_width=32, text_layers=2, text_heads=4),
      dtype=dtype, remat=False, attention_impl=None, num_classes=num_classes, cross_layers=2, cross_heads=4)
  model["part"].update(num_queries=3, num_parts=3, heads=4)
  return {"model": model, "loss": preset["loss"]}
