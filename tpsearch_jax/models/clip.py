"""OpenAI CLIP dual encoder in Flax Linen, returning full token sequences.

Parameter names follow OpenAI's checkpoint (``visual.conv1``, ``transformer.resblocks_i.attn`` …) so the weight
import in ``tpsearch_jax.checkpoints`` is a single table. Both towers apply the final LayerNorm and the projection to
*every* token: the cross-former, EFA and the part decoder need all of them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5  # PyTorch's default; Flax's 1e-6 would drift from the checkpoint.


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture of both towers. Defaults: ViT-B/16 at 384×128 (24×8 grid) + the 77-token text tower."""

  embed_dim: int = 512
  image_size: tuple[int, int] = (384, 128)
  patch_size: int = 16
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  context_length: int = 77
  vocab_size: int = 49408
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  dtype: Any = jnp.float32  # compute dtype; params stay float32
  remat: bool = False
  attention_impl: str | None = None  # None = XLA; "cudnn" on GPUs that support it

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


def quick_gelu(x: jax.Array) -> jax.Array:
  """x·σ(1.702x), CLIP's activation. Any shape."""
  return x * jax.nn.sigmoid(1.702 * x)


def _attention_fn(impl: str | None):
  """An ``attention_fn`` for ``nn.MultiHeadDotProductAttention`` backed by ``jax.nn.dot_product_attention``."""

  def attend(query, key, value, bias=None, mask=None, dtype=None, precision=None, **unused):
    del bias, precision, unused
    if mask is not None:
      mask = mask.astype(jnp.bool_)
    dtype = dtype or query.dtype
    return jax.nn.dot_product_attention(
        query.astype(dtype), key.astype(dtype), value.astype(dtype), mask=mask, implementation=impl)

  return attend


@dataclasses.dataclass(frozen=True)
class BlockInit:
  """Normal(0, std) kernel inits for a residual block; blocks built without one keep Flax's defaults.

  attn: q/k/v kernels; attn_out: attention output kernel; fc: MLP c_fc; proj: MLP c_proj. Biases stay zero.
  """

  attn: float
  attn_out: float
  fc: float
  proj: float


def _kernel(std: float | None) -> dict:
  """Keyword arguments selecting a Normal(0, std) kernel init, or none (the layer's default) when std is None."""
  return {} if std is None else {"kernel_init": nn.initializers.normal(std)}


class MLP(nn.Module):
  """c_fc → QuickGELU → c_proj. [..., D] → [..., D]."""

  width: int
  dtype: Any = jnp.float32
  block_init: BlockInit | None = None

  @nn.compact
  def __call__(self, x):
    i = self.block_init
    x = nn.Dense(self.width * 4, dtype=self.dtype, name="c_fc", **_kernel(i and i.fc))(x)
    x = quick_gelu(x)
    return nn.Dense(self.width, dtype=self.dtype, name="c_proj", **_kernel(i and i.proj))(x)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x)). [B, L, D] → [B, L, D]."""

  width: int
  heads: int
  dtype: Any = jnp.float32
  attention_impl: str | None = None
  block_init: BlockInit | None = None

  @nn.compact
  def __call__(self, x, mask=None):
    i = self.block_init
    inits = {} if i is None else {"kernel_init": nn.initializers.normal(i.attn),
                                  "out_kernel_init": nn.initializers.normal(i.attn_out)}
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, attention_fn=_attention_fn(self.attention_impl),
        name="attn", **inits)(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_2")(x)
    return x + MLP(self.width, dtype=self.dtype, block_init=i, name="mlp")(y)


class Transformer(nn.Module):
  """A stack of ``ResidualAttentionBlock`` named ``resblocks_{i}``. [B, L, D] → [B, L, D]."""

  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None
  block_init: BlockInit | None = None

  @nn.compact
  def __call__(self, x, mask=None):
    block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    for i in range(self.layers):
      x = block_cls(self.width, self.heads, self.dtype, self.attention_impl, block_init=self.block_init,
                    name=f"resblocks_{i}")(x, mask)
    return x


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
                    name="transformer")(x)
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
                    name="transformer")(x, mask)
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
