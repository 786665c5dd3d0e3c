"""Backbone choice of the retrieval model (``config.model.backbone``): the CLIP towers, or Park et al.'s published
backbones — BERT-base for text with an ImageNet ViT-B/16 ("vit_bert") or ResNet-50 ("rn50_bert") for images.

For the paper backbones a new linear projection per modality maps the backbone features to the joint width E
(``config.model.embed_dim``) on every token / map position, so the heads see the same contract as on CLIP:

  image tokens [B, 1 + N, E]: ViT — CLS, then the row-major patch grid; ResNet — row 0 is the max over the map (a
    ResNet has no CLS token), then the h×w map positions row-major. N = gh·gw for the part model's stripes.
  text tokens [B, L, E]: BERT's last hidden states, projected; "token" pooling takes [CLS] (position 0).

Parameter subtrees: ``image_backbone`` (ViT or ResNet, HF names), ``text_backbone`` (BERT), ``image_proj``,
``text_proj``. The input size is ``config.model.clip.image_size`` (= ``config.data.image_size``) for every backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpsearch_jax.models.bert import BertModel, load_bert
from tpsearch_jax.models.bert import model as bert_model
from tpsearch_jax.models.clip import CLIPConfig
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.resnet import ResNet, load_resnet50, merge_stats
from tpsearch_jax.models.resnet import model as resnet_model
from tpsearch_jax.models.vit import VisionTransformer, load_vit
from tpsearch_jax.models.vit import model as vit_model
from tpsearch_jax.reductions import max_along

BACKBONES = ("clip", "vit_bert", "rn50_bert")
# The path of every frozen BatchNorm statistic in the retrieval model's params (lr 0, no weight decay).
FROZEN_STATS = r"^image_backbone/.*/(mean|var)$"
STATS_PROBE = ("image_backbone", "embedder", "embedder", "normalization", "mean")


def joint_dim(clip: CLIPConfig, options) -> int:
  """E: CLIP's projection width, or ``options.embed_dim`` for the paper backbones."""
  return clip.embed_dim if options.backbone == "clip" else int(options.embed_dim)


def image_grid(clip: CLIPConfig, options) -> tuple[int, int]:
  """(gh, gw) of the image tokens after the CLS row for images of ``clip.image_size``."""
  if options.backbone == "vit_bert":
    return options.vit.grid(clip.image_size)
  if options.backbone == "rn50_bert":
    return options.resnet.grid(clip.image_size)
  return clip.grid


def check_backbone_options(clip: CLIPConfig, options, heads) -> None:
  """Raises ValueError naming the config field of an inconsistent backbone choice."""
  if options.backbone not in BACKBONES:
    raise ValueError(f"config.model.backbone must be one of {BACKBONES}, got {options.backbone!r}")
  if options.backbone == "clip":
    return
  if heads.mlm:
    raise ValueError(f"config.model.backbone={options.backbone!r}: the MLM / IRR head needs the CLIP text tower "
                     f"and CLIP token ids; set config.loss.mlm=0")
  if options.backbone == "rn50_bert" and options.global_pool != "max":
    raise ValueError("config.model.global_pool must be 'max' with the ResNet backbone (a ResNet has no CLS token)")
  if options.embed_dim < 1:
    raise ValueError(f"config.model.embed_dim must be >= 1, got {options.embed_dim}")
  image_grid(clip, options)  # divisibility of the input size


def tower_modules(clip: CLIPConfig, options) -> dict[str, nn.Module]:
  """The submodules of a paper backbone (see the module docstring), by attribute name."""
  e, o = joint_dim(clip, options), options
  image = (VisionTransformer(o.vit, tuple(clip.image_size), clip.dtype, clip.remat, clip.attention_impl)
           if o.backbone == "vit_bert" else ResNet(o.resnet, stats_in_params=True, dtype=clip.dtype, remat=clip.remat))
  return {"image_backbone": image, "text_backbone": BertModel(o.bert, clip.dtype, clip.remat, clip.attention_impl),
          "image_proj": nn.Dense(e, dtype=clip.dtype), "text_proj": nn.Dense(e, dtype=clip.dtype)}


def encode_image(model, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Paper backbone of ``model`` (a RetrievalModel): images [B, H, W, 3] → (tokens [B, 1+N, E], CLS / max [B, E])."""
  feats = model.image_backbone(images)
  if model.options.backbone == "rn50_bert":
    tokens = model.image_proj(feats.reshape(feats.shape[0], -1, feats.shape[-1]))
    pooled = max_along(tokens, axis=1)
    return jnp.concatenate([pooled[:, None], tokens], axis=1), pooled
  tokens = model.image_proj(feats)
  return tokens, tokens[:, 0]


def encode_text(model, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """BERT of ``model``: ids int [B, L] (0 = [PAD]) → (tokens [B, L, E], [CLS] token [B, E])."""
  hidden, _ = model.text_backbone(ids, ids != 0)
  tokens = model.text_proj(hidden)
  return tokens, tokens[:, 0]


def _require_same(path, what: str, have, want) -> None:
  if have != want:
    raise CheckpointError(f"{path}: {what} checkpoint architecture differs from the model config: checkpoint "
                          f"{have} vs configured {want} (config.model.{what.lower()})")


def pretrained_params(init: Mapping[str, Any], clip: CLIPConfig, options) -> dict[str, Any]:
  """``config.init.bert`` / ``vit`` / ``resnet`` → {"text_backbone": tree, "image_backbone": tree} (numpy, in the
  retrieval model's layout) for the configured paper backbone; only the paths that are set. Raises on a path the
  backbone does not use, or a checkpoint whose architecture differs from ``config.model.bert`` / ``vit`` / ``resnet``."""
  image_field = {"vit_bert": "vit", "rn50_bert": "resnet"}[options.backbone]
  for field in ("vit", "resnet"):
    if init.get(field) and field != image_field:
      raise ValueError(f"config.init.{field} is set but config.model.backbone={options.backbone!r} uses "
                       f"config.init.{image_field}")
  out = {}
  if init.get("bert"):
    bert, params = load_bert(init["bert"])
    _require_same(init["bert"], "BERT", bert.config, options.bert)
    out["text_backbone"] = params
  if init.get("vit") and image_field == "vit":
    vit, params = load_vit(init["vit"], tuple(clip.image_size))
    _require_same(init["vit"], "ViT", vit.config, options.vit)
    out["image_backbone"] = params
  if init.get("resnet") and image_field == "resnet":
    resnet, variables = load_resnet50(init["resnet"], tuple(clip.image_size), options.resnet.last_stride)
    _require_same(init["resnet"], "ResNet", resnet.config, options.resnet)
    out["image_backbone"] = merge_stats(variables["params"], variables["batch_stats"])
  return out


def summary(clip: CLIPConfig, options) -> str:
  """One line naming the paper backbone's towers, for logs and benchmark records."""
  image = (vit_model.summary(options.vit, tuple(clip.image_size)) if options.backbone == "vit_bert"
           else resnet_model.summary(options.resnet))
  return f"{image}; {bert_model.summary(options.bert)}; E {options.embed_dim}"
