"""IRRA's implicit relation reasoning: a cross-former that reads masked-caption tokens against image tokens, + MLM head.

Structure: LN_t(text tokens) attends to LN_i(image tokens incl. CLS) through one multi-head cross-attention with **no
residual**, then ``layers`` pre-LN residual blocks with bidirectional self-attention over all text positions (padding
included, no mask), then ``ln_post``. The head is Dense → QuickGELU → LayerNorm → Dense(vocab).

Init (width W, ``layers`` blocks), exactly IRRA's model/build.py (anosorae/IRRA @cfc2378), which re-initialises
only weights: q/k/v kernels N(0, W^-½); attention-output and MLP c_proj kernels N(0, W^-½·(2·layers)^-½); MLP c_fc
N(0, (2W)^-½); the cross-attention uses the same rule; head dense N(0, (2W)^-½), head fc N(0, W^-½·(2·layers)^-½).
Biases keep PyTorch's defaults: the attention biases (``nn.MultiheadAttention``'s in_proj_bias and out_proj.bias) are
zero; the ``nn.Linear`` biases (MLP c_fc, c_proj, head dense, fc) are uniform(±1/√fan_in) with fan_in W, 4W, W, W.
Every LayerNorm starts at (1, 0).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpsearch_jax.models.blocks import (LN_EPS, BlockInit, Transformer, attention_fn, quick_gelu,
                                       torch_linear_bias_init)


def block_init(width: int, layers: int) -> BlockInit:
  """The cross-former's kernel standard deviations for ``width`` and ``layers`` (see module docstring)."""
  scale = width ** -0.5
  return BlockInit(attn=scale, attn_out=scale * (2 * layers) ** -0.5, fc=(2 * width) ** -0.5,
                   proj=scale * (2 * layers) ** -0.5, linear_bias=True)


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
    bias = torch_linear_bias_init(x.shape[-1])  # both Linear layers have fan_in = width
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.normal(init.fc), bias_init=bias,
                 name="dense")(x)
    x = quick_gelu(x)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln")(x)
    return nn.Dense(self.vocab_size, dtype=self.dtype, kernel_init=nn.initializers.normal(init.proj), bias_init=bias,
                    name="fc")(x)
