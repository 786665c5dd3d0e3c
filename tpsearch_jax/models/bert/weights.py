"""Import of an HF BERT folder (``BertModel``, or ``BertForPreTraining`` such as bert-base-uncased) into Flax params.

Names map one to one (``tpsearch_jax.models.bert.model``): dots ↔ nesting, ``layer.{i}`` ↔ ``layer_{i}``, torch
``weight`` ↔ Dense ``kernel`` (transposed) / LayerNorm ``scale`` / Embed ``embedding``; the expected tensors are
derived from the Flax model of the config.json architecture, so the check and the mapping are one table. Legacy
``LayerNorm.gamma`` / ``beta`` names are read as ``weight`` / ``bias``; the MLM / NSP heads (``cls.*``) are dropped.
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
from tpsearch_jax.models.bert.model import BertConfig, BertModel, summary
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.clip.params_io import save_params

log = logging.getLogger(__name__)

KIND = "bert"
ANCHOR = "embeddings.word_embeddings.weight"
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def architecture(config: Mapping, source: str) -> BertConfig:
  """config.json of a BERT → BertConfig (transformers' BertConfig defaults for absent fields)."""
  hf_io.require_model_type(config, "bert", source)
  get = lambda k, d: config.get(k, d)  # noqa: E731
  if get("hidden_act", "gelu") != "gelu":
    raise CheckpointError(f"{source}: hidden_act is {get('hidden_act', 'gelu')!r}; the model implements 'gelu'")
  if get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointError(f"{source}: position_embedding_type is {get('position_embedding_type', None)!r}; only "
                          f"'absolute' is implemented")
  if get("is_decoder", False) or get("add_cross_attention", False):
    raise CheckpointError(f"{source}: a decoder / cross-attention BERT; only the bidirectional encoder is supported")
  hidden, heads = get("hidden_size", 768), get("num_attention_heads", 12)
  if hidden % heads:
    raise CheckpointError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
  return BertConfig(vocab_size=get("vocab_size", 30522), hidden_size=hidden, num_layers=get("num_hidden_layers", 12),
                    num_heads=heads, intermediate_size=get("intermediate_size", 3072),
                    max_position_embeddings=get("max_position_embeddings", 512),
                    type_vocab_size=get("type_vocab_size", 2), layer_norm_eps=float(get("layer_norm_eps", 1e-12)))


def _hf_name(path: tuple[str, ...]) -> str:
  *modules, leaf = path
  return ".".join(re.sub(r"^layer_(\d+)$", r"layer.\1", m) for m in modules) + "." + _LEAF[leaf]


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(reversed(shape)) if path[-1] == "kernel" else tuple(shape)


def abstract_params(c: BertConfig) -> dict:
  """Shapes of ``BertModel(c)``'s params (nothing allocated)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: BertModel(c).init(jax.random.key(0), ids))["params"]


def convert_state_dict(state: Mapping[str, np.ndarray], config: Mapping,
                       source: str = "state dict") -> tuple[BertConfig, dict]:
  """HF BERT tensors + config.json → (BertConfig, Flax params float32); every problem reported at once."""
  c = architecture(config, source)
  state = hf_io.strip_prefix(state, "bert.", ANCHOR)
  state = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
           for k, v in state.items()}
  state = hf_io.drop_unused(state, ("cls.",), ("position_ids", "token_type_ids"), source)
  flat = traverse_util.flatten_dict(abstract_params(c))
  hf_io.check_tensors(state, {_hf_name(p): _torch_shape(p, a.shape) for p, a in flat.items()}, source, summary(c))
  params = {p: (hf_io.f32(state[_hf_name(p)]).T if p[-1] == "kernel" else hf_io.f32(state[_hf_name(p)]))
            for p in flat}
  return c, traverse_util.unflatten_dict(params)


def architecture_fields(c: BertConfig) -> dict:
  """What a converted file records: kind and the BertConfig fields."""
  return {"kind": KIND, **dataclasses.asdict(c)}


def load_bert(path, *, dtype: Any = jnp.float32, remat: bool = False,
              attention_impl: str | None = None) -> tuple[BertModel, dict]:
  """HF BERT folder (config.json + model.safetensors) or a converted .msgpack → (``BertModel``, float32 params).

  ``model.apply({"params": params}, input_ids, attention_mask)`` → (last_hidden_state [B, L, H], pooler_output
  [B, H]), as transformers' ``BertModel`` in eval mode.
  """
  if str(path).endswith(".msgpack"):
    params, arch = hf_io.read_converted(path, KIND)
    arch.pop("kind")
    c = BertConfig(**arch)
  else:
    state, config, source = hf_io.read_folder(path, "BERT")
    c, params = convert_state_dict(state, config, source)
  if isinstance(dtype, str):
    dtype = jnp.dtype(dtype)
  log.info("Loaded BERT from %s: %s", path, summary(c))
  return BertModel(c, dtype, remat, attention_impl), params


def convert_bert(src, dst) -> str:
  """Converts an HF BERT folder once into a .msgpack at ``dst``; returns its one-line summary."""
  model, params = load_bert(src)
  save_params(params, dst, architecture_fields(model.config))
  return summary(model.config)
