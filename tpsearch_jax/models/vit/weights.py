"""Import of an HF ``ViTModel`` / ``ViTForImageClassification`` folder into ``VisionTransformer`` params.

The architecture comes from config.json; the position grid is resampled to the requested image size exactly as for
CLIP (bilinear, half-pixel centres, no antialiasing: ``clip.posemb.resize_posemb``); the pooler and a classifier
head are dropped (logged). Every missing / unexpected / mis-shaped tensor is reported at once (``CheckpointError``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from tpsearch_jax.models import hf_io
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.clip.params_io import save_params
from tpsearch_jax.models.clip.posemb import resize_posemb
from tpsearch_jax.models.vit.model import ViTConfig, VisionTransformer, summary

log = logging.getLogger(__name__)

KIND = "vit"
ANCHOR = "embeddings.patch_embeddings.projection.weight"
# HF ViT layer name → our block name (tpsearch_jax.models.blocks.ResidualAttentionBlock).
_BLOCK = {"layernorm_before": "ln_1", "layernorm_after": "ln_2", "intermediate.dense": "mlp/c_fc",
          "output.dense": "mlp/c_proj"}
_ATTN = {"query": "attention.attention.query", "key": "attention.attention.key", "value": "attention.attention.value",
         "out": "attention.output.dense"}


def architecture(config: Mapping, source: str) -> tuple[ViTConfig, tuple[int, int]]:
  """config.json of a ViT → (ViTConfig, the native image size)."""
  hf_io.require_model_type(config, "vit", source)
  get = lambda k, d: config.get(k, d)  # noqa: E731  (transformers' ViTConfig defaults)
  if get("hidden_act", "gelu") != "gelu":
    raise CheckpointError(f"{source}: hidden_act is {get('hidden_act', 'gelu')!r}; the ViT implements 'gelu'")
  if not get("qkv_bias", True):
    raise CheckpointError(f"{source}: qkv_bias is false; the ViT implements biased q/k/v projections")
  if get("num_channels", 3) != 3:
    raise CheckpointError(f"{source}: num_channels is {get('num_channels', 3)}, expected 3")
  patch = hf_io.pair(get("patch_size", 16), "patch_size", source)
  if patch[0] != patch[1]:
    raise CheckpointError(f"{source}: patch_size {patch} is not square")
  size = hf_io.pair(get("image_size", 224), "image_size", source)
  hidden, heads = get("hidden_size", 768), get("num_attention_heads", 12)
  if hidden % heads:
    raise CheckpointError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
  c = ViTConfig(patch_size=patch[0], hidden_size=hidden, num_layers=get("num_hidden_layers", 12), num_heads=heads,
                mlp_dim=get("intermediate_size", 3072), layer_norm_eps=float(get("layer_norm_eps", 1e-12)))
  return c, (size[0] // patch[0] * patch[0], size[1] // patch[0] * patch[0])


def expected_shapes(c: ViTConfig, grid: tuple[int, int]) -> dict[str, tuple[int, ...]]:
  """HF tensor name → torch shape for the native ``grid``."""
  h, p, m = c.hidden_size, c.patch_size, c.mlp_dim
  shapes = {ANCHOR: (h, 3, p, p), "embeddings.patch_embeddings.projection.bias": (h,), "embeddings.cls_token": (1, 1, h),
            "embeddings.position_embeddings": (1, 1 + grid[0] * grid[1], h), "layernorm.weight": (h,),
            "layernorm.bias": (h,)}
  for i in range(c.num_layers):
    pre = f"encoder.layer.{i}."
    for name in ("layernorm_before", "layernorm_after"):
      shapes[f"{pre}{name}.weight"] = shapes[f"{pre}{name}.bias"] = (h,)
    for name in _ATTN.values():
      shapes[f"{pre}{name}.weight"], shapes[f"{pre}{name}.bias"] = (h, h), (h,)
    shapes[f"{pre}intermediate.dense.weight"], shapes[f"{pre}intermediate.dense.bias"] = (m, h), (m,)
    shapes[f"{pre}output.dense.weight"], shapes[f"{pre}output.dense.bias"] = (h, m), (h,)
  return shapes


def _block(state: Mapping[str, np.ndarray], pre: str, heads: int) -> dict:
  attn = {}
  for flax_name, hf_name in _ATTN.items():
    w, b = hf_io.f32(state[f"{pre}{hf_name}.weight"]), hf_io.f32(state[f"{pre}{hf_name}.bias"])
    if flax_name == "out":  # (out, heads·hd) → (heads, hd, out)
      attn["out"] = {"kernel": w.T.reshape(heads, -1, w.shape[0]), "bias": b}
    else:  # (heads·hd, in) → (in, heads, hd)
      attn[flax_name] = {"kernel": w.T.reshape(w.shape[1], heads, -1), "bias": b.reshape(heads, -1)}
  block = {"attn": attn, "mlp": {}}
  for hf_name, ours in _BLOCK.items():
    if ours.startswith("mlp/"):
      block["mlp"][ours[4:]] = hf_io.dense(state, pre + hf_name)
    else:
      block[ours] = hf_io.layer_norm(state, pre + hf_name)
  return block


def to_flax(state: Mapping[str, np.ndarray], c: ViTConfig) -> dict:
  """Checked HF tensors → ``VisionTransformer(c)`` params at the native grid (float32)."""
  return {
      "embeddings": {
          "patch_embeddings": {"projection": hf_io.conv(state, "embeddings.patch_embeddings.projection", bias=True)},
          "cls_token": hf_io.f32(state["embeddings.cls_token"]).reshape(-1),
          "position_embeddings": hf_io.f32(state["embeddings.position_embeddings"])[0],
      },
      "encoder": {f"resblocks_{i}": _block(state, f"encoder.layer.{i}.", c.num_heads) for i in range(c.num_layers)},
      "layernorm": hf_io.layer_norm(state, "layernorm"),
  }


def convert_state_dict(state: Mapping[str, np.ndarray], config: Mapping, image_size: tuple[int, int] | None = None,
                       source: str = "state dict") -> tuple[ViTConfig, tuple[int, int], dict]:
  """HF ViT tensors + config.json → (ViTConfig, image size, params); ``image_size`` None keeps the native one."""
  c, native = architecture(config, source)
  state = hf_io.strip_prefix(state, "vit.", ANCHOR)
  state = hf_io.drop_unused(state, ("pooler.", "classifier."), ("position_ids",), source)
  native_grid = c.grid(native)
  hf_io.check_tensors(state, expected_shapes(c, native_grid), source, summary(c, native))
  params = to_flax(state, c)
  size = native if image_size is None else tuple(int(v) for v in image_size)
  grid = c.grid(size)
  if grid != native_grid:
    params["embeddings"]["position_embeddings"] = resize_posemb(params["embeddings"]["position_embeddings"],
                                                                native_grid, grid)
    log.info("%s: ViT position grid resampled %dx%d -> %dx%d (bilinear, half-pixel centres, no antialias)", source,
             *native_grid, *grid)
  return c, size, params


def architecture_fields(c: ViTConfig, image_size: tuple[int, int]) -> dict:
  """What a converted file records: kind, the ViTConfig fields and the image size."""
  return {"kind": KIND, **dataclasses.asdict(c), "image_size": list(image_size)}


def load_vit(path, image_size: tuple[int, int] | None = None, *, dtype: Any = jnp.float32, remat: bool = False,
             attention_impl: str | None = None) -> tuple[VisionTransformer, dict]:
  """HF ViT folder (or a .msgpack from the convert CLI) → (``VisionTransformer``, params of float32 numpy arrays).

  ``model.apply({"params": params}, images_nhwc)`` → last_hidden_state [B, 1 + N, hidden]. ``image_size`` (H, W):
  the position grid is resampled to it (None: the checkpoint's own size).
  """
  if str(path).endswith(".msgpack"):
    params, arch = hf_io.read_converted(path, KIND)
    size = tuple(arch.pop("image_size"))
    arch.pop("kind")
    c = ViTConfig(**arch)
    if image_size is not None and tuple(image_size) != size:
      raise CheckpointError(f"{path}: converted for images {size}, requested {tuple(image_size)}; convert again "
                            f"from the original checkpoint (resampling twice is lossy)")
  else:
    state, config, source = hf_io.read_folder(path, "ViT")
    c, size, params = convert_state_dict(state, config, image_size, source)
  if isinstance(dtype, str):
    dtype = jnp.dtype(dtype)
  log.info("Loaded ViT from %s: %s", path, summary(c, size))
  return VisionTransformer(c, size, dtype, remat, attention_impl), params


def convert_vit(src, dst, image_size: tuple[int, int] | None = None) -> str:
  """Converts an HF ViT folder once into a .msgpack at ``dst``; returns its one-line summary."""
  model, params = load_vit(src, image_size)
  save_params(params, dst, architecture_fields(model.config, model.image_size))
  return summary(model.config, model.image_size)

