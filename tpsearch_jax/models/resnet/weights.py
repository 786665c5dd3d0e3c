"""Import of an HF ResNet folder (``ResNetModel`` / ``ResNetForImageClassification``, e.g. microsoft/resnet-50).

One name rule (``tpsearch_jax.models.resnet.model``): dots ↔ nesting, ``stages.{s}`` / ``layers.{j}`` / ``layer.{k}``
↔ ``stages_{s}`` / ``layers_{j}`` / ``layer_{k}``; conv ``weight`` (O, I, kh, kw) ↔ ``kernel`` (kh, kw, I, O);
BatchNorm ``weight``/``bias`` ↔ params ``scale``/``bias`` and ``running_mean``/``running_var`` ↔ batch_stats
``mean``/``var``. The expected tensors come from the Flax model of the config.json architecture; the classifier head
and ``num_batches_tracked`` are dropped (logged). ``last_stride`` changes no tensor shape.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from tpsearch_jax.models import hf_io
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.clip.params_io import save_params
from tpsearch_jax.models.resnet.model import ResNet, ResNetConfig, summary

log = logging.getLogger(__name__)

KIND = "resnet"
ANCHOR = "embedder.embedder.convolution.weight"
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def architecture(config: Mapping, source: str, last_stride: int = 2) -> ResNetConfig:
  """config.json of a ResNet → ResNetConfig (with our ``last_stride``)."""
  hf_io.require_model_type(config, "resnet", source)
  get = lambda k, d: config.get(k, d)  # noqa: E731  (transformers' ResNetConfig defaults)
  if get("layer_type", "bottleneck") != "bottleneck":
    raise CheckpointError(f"{source}: layer_type is {get('layer_type', None)!r}; only 'bottleneck' (ResNet-50/101/"
                          f"152) is implemented")
  if get("hidden_act", "relu") != "relu":
    raise CheckpointError(f"{source}: hidden_act is {get('hidden_act', None)!r}; the model implements 'relu'")
  if get("num_channels", 3) != 3:
    raise CheckpointError(f"{source}: num_channels is {get('num_channels', 3)}, expected 3")
  try:
    return ResNetConfig(embedding_size=get("embedding_size", 64),
                        hidden_sizes=tuple(get("hidden_sizes", (256, 512, 1024, 2048))),
                        depths=tuple(get("depths", (3, 4, 6, 3))),
                        downsample_in_first_stage=bool(get("downsample_in_first_stage", False)),
                        downsample_in_bottleneck=bool(get("downsample_in_bottleneck", False)), last_stride=last_stride)
  except ValueError as e:
    raise CheckpointError(f"{source}: {e}") from e


def _hf_name(path: tuple[str, ...]) -> str:
  *modules, leaf = path
  return ".".join(re.sub(r"^(stages|layers|layer)_(\d+)$", r"\1.\2", m) for m in modules) + "." + _LEAF[leaf]


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else tuple(shape)


def abstract_variables(c: ResNetConfig) -> dict:
  """Shapes of ``ResNet(c)``'s {"params", "batch_stats"} (nothing allocated)."""
  x = jnp.zeros((1, c.stride, c.stride, 3), jnp.float32)
  return jax.eval_shape(lambda: ResNet(c).init(jax.random.key(0), x))


def convert_state_dict(state: Mapping[str, np.ndarray], config: Mapping, last_stride: int = 2,
                       source: str = "state dict") -> tuple[ResNetConfig, dict, dict]:
  """HF ResNet tensors + config.json → (ResNetConfig, params, batch_stats), float32; every problem at once."""
  c = architecture(config, source, last_stride)
  state = hf_io.strip_prefix(state, "resnet.", ANCHOR)
  state = hf_io.drop_unused(state, ("classifier.",), ("num_batches_tracked",), source)
  abstract = abstract_variables(c)
  flat = {(col,) + p: a for col in ("params", "batch_stats") for p, a in traverse_util.flatten_dict(abstract[col]).items()}
  names = {k: _hf_name(k[1:]) for k in flat}
  hf_io.check_tensors(state, {names[k]: _torch_shape(k, a.shape) for k, a in flat.items()}, source, summary(c))
  out = {}
  for k in flat:
    x = hf_io.f32(state[names[k]])
    out[k] = x.transpose(2, 3, 1, 0) if k[-1] == "kernel" else x
  tree = traverse_util.unflatten_dict(out)
  return c, tree["params"], tree["batch_stats"]


def merge_stats(params: Mapping, batch_stats: Mapping) -> dict:
  """(params, batch_stats) → one tree with ``mean``/``var`` beside ``scale``/``bias``: the layout of
  ``ResNet(stats_in_params=True)`` inside the retrieval model."""
  flat = dict(traverse_util.flatten_dict(dict(params)))
  flat.update(traverse_util.flatten_dict(dict(batch_stats)))
  return traverse_util.unflatten_dict(flat)


def architecture_fields(c: ResNetConfig) -> dict:
  """What a converted file records: kind and the ResNetConfig fields."""
  d = dataclasses.asdict(c)
  d["hidden_sizes"], d["depths"] = list(c.hidden_sizes), list(c.depths)
  return {"kind": KIND, **d}


def load_resnet50(path, image_size: tuple[int, int] | None = None, last_stride: int = 2, *, dtype: Any = jnp.float32,
                  remat: bool = False) -> tuple[ResNet, dict]:
  """HF ResNet folder or converted .msgpack → (``ResNet``, {"params": ..., "batch_stats": ...}) of float32 arrays.

  ``model.apply(variables, images_nhwc)`` → [B, H/s, W/s, C], s = 32 (``last_stride=2``) or 16 (``last_stride=1``).
  ``image_size`` (H, W), when given, is checked for divisibility by s (the weights do not depend on it). BatchNorm
  uses the running statistics (frozen; see ``model.py``). Any bottleneck depth loads (ResNet-101/152 too).
  """
  if str(path).endswith(".msgpack"):
    tree, arch = hf_io.read_converted(path, KIND)
    arch.pop("kind")
    arch["hidden_sizes"], arch["depths"] = tuple(arch["hidden_sizes"]), tuple(arch["depths"])
    c = dataclasses.replace(ResNetConfig(**arch), last_stride=last_stride)
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
  else:
    state, config, source = hf_io.read_folder(path, "ResNet")
    c, params, stats = convert_state_dict(state, config, last_stride, source)
    variables = {"params": params, "batch_stats": stats}
  if image_size is not None:
    try:
      c.grid(tuple(image_size))
    except ValueError as e:
      raise CheckpointError(f"{path}: {e}") from e
  if isinstance(dtype, str):
    dtype = jnp.dtype(dtype)
  log.info("Loaded ResNet from %s: %s", path, summary(c))
  return ResNet(c, False, dtype, remat), variables


def convert_resnet(src, dst) -> str:
  """Converts an HF ResNet folder once into a .msgpack at ``dst``; returns its one-line summary."""
  model, variables = load_resnet50(src)
  save_params(variables, dst, architecture_fields(model.config))
  return summary(model.config)
