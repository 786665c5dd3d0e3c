"""OpenAI CLIP dual encoder in Flax Linen, returning full token sequences.

Parameter names follow OpenAI's checkpoint (``visual.conv1``, ``transformer.resblocks_i.attn`` …) so the weight
import in ``tpsearch_jax.models.clip.weights`` is a single table. Both towers apply the final LayerNorm and the
projection to *every* token: the cross-former, EFA and the part decoder need all of them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tpsearch_jax.models.blocks import LN_EPS, Transformer


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture of both towers. Defaults: ViT-B/16 at 384×128 (24×8 grid) + the 77-token text tower."""

  embed_dim: int = 512
  image_size: tuple[int, int] = (384, 128)
  patch_size: int = 16
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int | None = None  # MLP hidden width; None: 4 × vision_width
  context_length: int = 77
  vocab_size: int = 49408
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp_dim: int | None = None  # MLP hidden width; None: 4 × text_width
  dtype: Any = jnp.float32  # compute dtype; params stay float32
  remat: bool = False
  attention_impl: str | None = None  # None = XLA; "cudnn" on GPUs that support it

  def __post_init__(self):
    for name in ("vision_mlp_dim", "text_mlp_dim"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None (4 x width), got {value!r}")

  @property
  def vision_mlp_width(self) -> int:
    """The vision MLP hidden width: ``vision_mlp_dim``, or 4 × vision_width when that is None."""
    return 4 * self.vision_width if self.vision_mlp_dim is None else self.vision_mlp_dim

  @property
  def text_mlp_width(self) -> int:
    """The text MLP hidden width: ``text_mlp_dim``, or 4 × text_width when that is None."""
    return 4 * self.text_width if self.text_mlp_dim is None else self.text_mlp_dim

  @property
  def grid(self) -> tuple[int, int]:
    h, w = self.image_size
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
    return h // self.patch_size, w // self.patch_size

  @classmethod
  def from_dict(cls, d) -> "CLIPConfig":
    d = dict(d)
    if "image_size" in d:
      d["image_size"] = tuple(d["image_size"])
    if isinstance(d.get("dtype"), str):
      d["dtype"] = jnp.dtype(d["dtype"])
    return cls(**d)


class VisionTransformer(nn.Module):
  """CLIP ViT. images [B, H, W, 3] (normalised, NHWC) → (tokens [B, 1+N, E], pooled CLS [B, E])."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, images):
    c = self.config
    gh, gw = c.grid
    if images.shape[1:3] != tuple(c.image_size):
      raise ValueError(f"images have spatial shape {images.shape[1:3]}, the model expects {c.image_size}")
    x = nn.Conv(c.vision_width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", use_bias=False, dtype=c.dtype, name="conv1")(images.astype(c.dtype))
    x = x.reshape(x.shape[0], gh * gw, c.vision_width)  # row-major over the grid
    scale = c.vision_width ** -0.5
    cls = self.param("class_embedding", nn.initializers.normal(scale), (c.vision_width,))
    pos = self.param("positional_embedding", nn.initializers.normal(scale), (1 + gh * gw, c.vision_width))
    cls = jnp.broadcast_to(cls.astype(c.dtype), (x.shape[0], 1, c.vision_width))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(c.dtype)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=c.dtype, name="ln_pre")(x)
    x = Transformer(c.vision_width, c.vision_layers, c.vision_heads, c.dtype, c.remat, c.attention_impl,
                    mlp_dim=c.vision_mlp_width, name="transformer")(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=c.dtype, name="ln_post")(x)
    proj = self.param("proj", nn.initializers.normal(scale), (c.vision_width, c.embed_dim))
    tokens = x @ proj.astype(c.dtype)
    return tokens, tokens[:, 0]


class TextTransformer(nn.Module):
  """Causal CLIP text tower. ids int [B, L] (zero-padded) → (tokens [B, L, E], pooled EOT [B, E]).

  The EOT position is the argmax of the ids (EOT 49407 is the largest id; first occurrence), as OpenAI/IRRA pool.
  """

  config: CLIPConfig

  @nn.compact
  def __call__(self, ids):
    c = self.config
    length = ids.shape[-1]
    if length > c.context_length:
      raise ValueError(f"token ids have length {length} > context_length {c.context_length}")
    x = nn.Embed(c.vocab_size, c.text_width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding")(ids)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01), (c.context_length, c.text_width))
    x = (x + pos[:length]).astype(c.dtype)
    mask = nn.make_causal_mask(ids)
    x = Transformer(c.text_width, c.text_layers, c.text_heads, c.dtype, c.remat, c.attention_impl,
                    mlp_dim=c.text_mlp_width, name="transformer")(x, mask)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=c.dtype, name="ln_final")(x)
    proj = self.param("text_projection", nn.initializers.normal(c.text_width ** -0.5),
                      (c.text_width, c.embed_dim))
    tokens = x @ proj.astype(c.dtype)
    eot = jnp.argmax(ids, axis=-1)
    pooled = jnp.take_along_axis(tokens, eot[:, None, None], axis=1)[:, 0]
    return tokens, pooled


class CLIP(nn.Module):
  """The dual encoder. ``visual`` and ``text`` sub-trees mirror OpenAI's ``visual.*`` and text-side names."""

  config: CLIPConfig = CLIPConfig()

  def setup(self):
    self.visual = VisionTransformer(self.config)
    self.text = TextTransformer(self.config)

  def encode_image(self, images):
    """images float [B, H, W, 3] → (tokens [B, 1+N, E], pooled [B, E])."""
    return self.visual(images)

  def encode_text(self, ids):
    """ids int [B, L] → (tokens [B, L, E], pooled [B, E])."""
    return self.text(ids)

  def __call__(self, images, ids):
    """Both towers: ((img_tokens, img_pooled), (txt_tokens, txt_pooled))."""
    return self.encode_image(images), self.encode_text(ids)


@functools.lru_cache(maxsize=None)
def tiny_config(**overrides) -> CLIPConfig:
  """A few-thousand-parameter CLIP for tests: 32×16 images, patch 8 (4×2 grid), width 32, 2 layers, vocab 49408."""
  base = dict(embed_dim=16, image_size=(32, 16), patch_size=8, vision_width=32, vision_layers=2, vision_heads=4,
              context_length=77, vocab_size=49408, text_width=32, text_layers=2, text_heads=4)
  base.update(overrides)
  return CLIPConfig(**base)
