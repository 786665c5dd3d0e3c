"""The ImageNet ViT (Hugging Face ``ViTModel``, e.g. google/vit-base-patch16-224) in Flax Linen.

It is CLIP's vision tower without ``ln_pre`` and ``proj``, with a bias in the patch embedding and exact GELU, LayerNorm
eps 1e-12: the blocks are ``tpsearch_jax.models.blocks.Transformer`` (pre-norm, ``resblocks_i``), the embeddings
keep HF's names (``embeddings/patch_embeddings/projection``, ``embeddings/cls_token``,
``embeddings/position_embeddings``), and the final LayerNorm is ``layernorm``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tpsearch_jax.models.blocks import Transformer


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of the ViT (no input size: the module takes ``image_size``). Defaults: ViT-B/16."""

  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  layer_norm_eps: float = 1e-12

  def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the patch grid for images of ``image_size`` (H, W)."""
    h, w = image_size
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"image_size {tuple(image_size)} is not divisible by the ViT patch size {self.patch_size}")
    return h // self.patch_size, w // self.patch_size


def summary(c: ViTConfig, image_size: tuple[int, int]) -> str:
  """One line for messages."""
  return (f"ViT width {c.hidden_size} x {c.num_layers} layers / {c.num_heads} heads / mlp {c.mlp_dim}, patch "
          f"{c.patch_size}, image {image_size[0]}x{image_size[1]}, ln eps {c.layer_norm_eps:g}")


class VisionTransformer(nn.Module):
  """images [B, H, W, 3] (normalised, NHWC) → last_hidden_state [B, 1 + N, hidden] (CLS first, then the row-major
  grid), after the final LayerNorm: HF ``ViTModel(...).last_hidden_state``."""

  config: ViTConfig = ViTConfig()
  image_size: tuple[int, int] = (224, 224)
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, images):
    c = self.config
    gh, gw = c.grid(self.image_size)
    if images.shape[1:3] != tuple(self.image_size):
      raise ValueError(f"images have spatial shape {images.shape[1:3]}, the ViT expects {tuple(self.image_size)}")
    x = _Embeddings(c, (gh, gw), self.dtype, name="embeddings")(images.astype(self.dtype))
    x = Transformer(c.hidden_size, c.num_layers, c.num_heads, self.dtype, self.remat, self.attention_impl,
                    mlp_dim=c.mlp_dim, activation="gelu", ln_eps=c.layer_norm_eps, name="encoder")(x)
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layernorm")(x)


class _PatchEmbeddings(nn.Module):
  """images [B, H, W, 3] → patch features [B, gh, gw, hidden] (the conv ``projection``, with bias)."""

  config: ViTConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.config.patch_size
    return nn.Conv(self.config.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                   name="projection")(x)


class _Embeddings(nn.Module):
  """images [B, H, W, 3] → [B, 1 + gh·gw, hidden]: CLS + row-major patches + position table (HF names)."""

  config: ViTConfig
  grid: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    c, (gh, gw) = self.config, self.grid
    x = _PatchEmbeddings(c, self.dtype, name="patch_embeddings")(images)
    x = x.reshape(x.shape[0], gh * gw, c.hidden_size)
    init = nn.initializers.truncated_normal(0.02)
    cls = self.param("cls_token", init, (c.hidden_size,))
    pos = self.param("position_embeddings", init, (1 + gh * gw, c.hidden_size))
    cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, c.hidden_size))
    return jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)
