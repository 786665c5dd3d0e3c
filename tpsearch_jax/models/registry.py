"""Model registry: ``method_options(config)`` reads ``config.model`` / ``config.loss`` into frozen options once;
``build_model(options)`` turns them into the retrieval module.

Keys missing from the config take the method preset's value (``presets.method_preset(config.model.name)``); keys
the model does not know raise an error naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from tpsearch_jax import objectives
from tpsearch_jax.models.bert import BertConfig
from tpsearch_jax.models.clip import CLIPConfig
from tpsearch_jax.models.part_decoder import PartOptions
from tpsearch_jax.models.presets import METHODS, method_preset
from tpsearch_jax.models.resnet import ResNetConfig
from tpsearch_jax.models.retrieval import EmbedWeights, ModelOptions, RetrievalModel, check_model_options
from tpsearch_jax.models.vit import ViTConfig
from tpsearch_jax.objectives import LossOptions
from tpsearch_jax.user_errors import UserError

DTYPES = ("float32", "bfloat16")
_TOWERS = {"bert": BertConfig, "vit": ViTConfig, "resnet": ResNetConfig}  # the paper backbones' architectures
_BACKBONE_KEYS = ("clip", "dtype", "remat", "attention_impl")


def resolve_dtype(name: str) -> str:
  """``config.model.dtype`` → "float32" | "bfloat16"; "auto" = bfloat16 on GPU/TPU, float32 on CPU."""
  if name == "auto":
    return "bfloat16" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "float32"
  if name not in DTYPES:
    raise UserError(f"config.model.dtype must be 'auto', 'float32' or 'bfloat16', got {name!r}")
  return name


def _plain(x, where: str) -> dict:
  """ConfigDict / Mapping → plain nested dict."""
  if hasattr(x, "to_dict"):
    return x.to_dict()
  if isinstance(x, Mapping):
    return {k: _plain(v, f"{where}.{k}") if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
            for k, v in x.items()}
  raise TypeError(f"{where} must be a mapping or ConfigDict, got {type(x).__name__}")


def _merge(defaults: dict, given: dict, where: str) -> dict:
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserError(f"unknown key(s) {unknown} in {where}; known: {sorted(defaults)}")
  return {**defaults, **given}


def check_options(clip: CLIPConfig, model: ModelOptions, loss: LossOptions) -> None:
  """Raises ValueError naming the config field of any inconsistent model or loss option."""
  objectives.check_loss_options(loss, model.use_parts)
  check_model_options(clip, model, objectives.required_heads(loss))


@dataclasses.dataclass(frozen=True)
class MethodOptions:
  """What a method is: the CLIP tower's architecture (also the image / text sizes of the paper backbones), the
  retrieval model's options and the loss options (which decide the heads)."""

  clip: CLIPConfig
  model: ModelOptions
  loss: LossOptions


def method_options(config) -> MethodOptions:
  """config (ConfigDict or nested mapping with "model" and "loss") → frozen, checked ``MethodOptions``."""
  model_cfg = _plain(config["model"], "config.model")
  loss_cfg = _plain(config["loss"], "config.loss") if "loss" in config else {}
  name = model_cfg.get("name")
  if name not in METHODS:
    raise UserError(f"config.model.name must be one of {METHODS}, got {name!r}")
  preset = method_preset(name)
  backbone = {k: model_cfg.pop(k) for k in _BACKBONE_KEYS if k in model_cfg}
  model_defaults = dict(preset["model"], num_classes=0)
  model = _merge(model_defaults, model_cfg, "config.model")
  model["num_classes"] = int(model["num_classes"] or 0)  # None (not yet filled from the data) = no classifier size
  model["part"] = PartOptions(**_merge(model_defaults["part"], model_cfg.get("part", {}), "config.model.part"))
  for key, cls in _TOWERS.items():
    arch = _merge(model_defaults[key], model_cfg.get(key, {}), f"config.model.{key}")
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}  # JSON lists → hashable tuples
    try:
      model[key] = cls(**arch)
    except ValueError as e:
      raise UserError(f"config.model.{key}: {e}") from e
  model["embed_weights"] = EmbedWeights(**_merge(model_defaults["embed_weights"], model_cfg.get("embed_weights", {}),
                                                 "config.model.embed_weights"))
  loss = LossOptions(**_merge(preset["loss"], loss_cfg, "config.loss"))

  clip = dict(backbone.get("clip", {}))
  for k in ("dtype", "remat", "attention_impl"):
    if k in clip:
      raise UserError(f"config.model.clip.{k} is not allowed; set config.model.{k}")
  dtype = resolve_dtype(backbone.get("dtype", "float32"))
  clip_config = CLIPConfig.from_dict(dict(clip, dtype=jnp.dtype(dtype),
                                          remat=bool(backbone.get("remat", False)),
                                          attention_impl=backbone.get("attention_impl")))
  options = ModelOptions(**model)
  check_options(clip_config, options, loss)
  return MethodOptions(clip_config, options, loss)


def build_model(options: MethodOptions) -> RetrievalModel:
  """``method_options(config)`` (or a run's ``Options``) → ``RetrievalModel`` with the heads its losses need."""
  return RetrievalModel(options.clip, options.model, objectives.required_heads(options.loss))
