"""IRRA's implicit relation reasoning: a cross-former that reads masked-caption tokens against image tokens, + MLM head.

Structure: LN_t(text tokens) attends to LN_i(image tokens incl. CLS) through one multi-head cross-attention with **no
residual**, then ``layers`` pre-LN residual blocks with bidirectional self-attention over all text positions (padding
included, no mask), then ``ln_post``. The head is Dense → QuickGELU → LayerNorm → Dense(vocab).

Init (width W, ``layers`` blocks): q/k/v kernels N(0, W^-½); attention-output and MLP c_proj kernels
N(0, W^-½·(2·layers)^-½); MLP c_fc N(0, (2W)^-½); the cross-attention uses the same rule; head dense N(0, (2W)^-½),
head fc N(0, W^-½·(2·layers)^-½); every bias starts at zero, every LayerNorm at (1, 0).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpsearch_jax.models.blocks import LN_EPS, BlockInit, Transformer, attention_fn, quick_gelu


def block_init(width: int, layers: int) -> BlockInit:
  """The cross-former's kernel standard deviations for ``width`` and ``layers`` (see module docstring)."""
  scale = width ** -0.5
  return BlockInit(attn=scale, attn_out=scale * (2 * layers) ** -0.5, fc=(2 * width) ** -0.5,
                   proj=scale * (2 * layers) ** -0.5)


class CrossFormer(nn.Module):
  """text [B, L, W] (masked-caption tokens), image [B, 1+N, W] → fused text tokens [B, L, W]."""

  width: int
  layers: int = 4
  heads: int = 8
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, text: jax.Array, image: jax.Array) -> jax.Array:
    init = block_init(self.width, self.layers)
    q = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_pre_t")(text.astype(self.dtype))
    kv = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_pre_i")(image.astype(self.dtype))
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, attention_fn=attention_fn(self.attention_impl),
        kernel_init=nn.initializers.normal(init.attn), out_kernel_init=nn.initializers.normal(init.attn_out),
        name="cross_attn")(q, kv)
    x = Transformer(self.width, self.layers, self.heads, self.dtype, self.remat, self.attention_impl, block_init=init,
                    name="transformer")(x)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_post")(x)


class MLMHead(nn.Module):
  """x [B, L, W] → vocabulary logits [B, L, vocab] (compute dtype)."""

  width: int
  vocab_size: int
  layers: int = 4  # of the cross-former; sets the fc init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = block_init(self.width, self.layers)
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.normal(init.fc), name="dense")(x)
    x = quick_gelu(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln")(x)
    return nn.Dense(self.vocab_size, dtype=self.dtype, kernel_init=nn.initializers.normal(init.proj), name="fc")(x)
