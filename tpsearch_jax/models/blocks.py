"""The pre-LN transformer block shared by the CLIP towers, the cross-former and the part model.

Sub-module names follow OpenAI's CLIP checkpoint (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, a stack
of ``resblocks_{i}``), so the weight import is a single table and every module built from these blocks shares it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5  # PyTorch's default; Flax's 1e-6 would drift from the checkpoint.


def quick_gelu(x: jax.Array) -> jax.Array:
  """x·σ(1.702x), CLIP's activation. Any shape."""
  return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU of BERT and the ImageNet ViT (PyTorch ``nn.GELU()``, HF "gelu"). Any shape."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


def activation_fn(name: str):
  """An MLP activation by name: "quick_gelu" (CLIP) or "gelu" (exact erf GELU)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def attention_fn(impl: str | None):
  """An ``attention_fn`` for ``nn.MultiHeadDotProductAttention`` backed by ``jax.nn.dot_product_attention``.

  q [B, L, H, d], k/v [B, S, H, d], mask broadcastable to [B, H, L, S] (True = attend) → [B, L, H, d].
  ``impl``: None (XLA) or "cudnn".
  """

  def attend(query, key, value, bias=None, mask=None, dtype=None, precision=None, **unused):
    del bias, precision, unused
    if mask is not None:
      mask = mask.astype(jnp.bool_)
    dtype = dtype or query.dtype
    return jax.nn.dot_product_attention(
        query.astype(dtype), key.astype(dtype), value.astype(dtype), mask=mask, implementation=impl)

  return attend


def torch_linear_bias_init(fan_in: int):
  """PyTorch's default ``nn.Linear`` bias init, uniform(−1/√fan_in, 1/√fan_in), as a Flax initializer."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


@dataclasses.dataclass(frozen=True)
class BlockInit:
  """Normal(0, std) kernel inits for a residual block; blocks built without one keep Flax's defaults.

  attn: q/k/v kernels; attn_out: attention output kernel; fc: MLP c_fc; proj: MLP c_proj. Attention biases stay zero
  (PyTorch's ``nn.MultiheadAttention`` zero-initialises in_proj_bias and out_proj.bias). MLP biases are zero, or with
  ``linear_bias=True`` PyTorch's ``nn.Linear`` default uniform(±1/√fan_in) (IRRA re-initialises only the weights).
  """

  attn: float
  attn_out: float
  fc: float
  proj: float
  linear_bias: bool = False


def kernel_init(std: float | None) -> dict:
  """Keyword arguments selecting a Normal(0, std) kernel init, or none (the layer's default) when std is None."""
  return {} if std is None else {"kernel_init": nn.initializers.normal(std)}


class MLP(nn.Module):
  """c_fc → activation (QuickGELU unless ``activation`` says otherwise) → c_proj. [..., D] → [..., D]; hidden width
  ``hidden`` (None: 4·D)."""

  width: int
  dtype: Any = jnp.float32
  block_init: BlockInit | None = None
  hidden: int | None = None
  activation: str = "quick_gelu"

  @nn.compact
  def __call__(self, x):
    i = self.block_init
    hidden = 4 * self.width if self.hidden is None else self.hidden
    torch_bias = bool(i and i.linear_bias)
    fc_bias = {"bias_init": torch_linear_bias_init(x.shape[-1])} if torch_bias else {}
    proj_bias = {"bias_init": torch_linear_bias_init(hidden)} if torch_bias else {}
    x = nn.Dense(hidden, dtype=self.dtype, name="c_fc", **kernel_init(i and i.fc), **fc_bias)(x)
    x = activation_fn(self.activation)(x)
    return nn.Dense(self.width, dtype=self.dtype, name="c_proj", **kernel_init(i and i.proj), **proj_bias)(x)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x)). [B, L, D] → [B, L, D].

  ``activation`` / ``ln_eps``: CLIP's QuickGELU and 1e-5 by default; the ImageNet ViT uses "gelu" and 1e-12.
  """

  width: int
  heads: int
  dtype: Any = jnp.float32
  attention_impl: str | None = None
  block_init: BlockInit | None = None
  mlp_dim: int | None = None  # MLP hidden width; None: 4·width
  activation: str = "quick_gelu"
  ln_eps: float = LN_EPS

  @nn.compact
  def __call__(self, x, mask=None):
    i = self.block_init
    inits = {} if i is None else {"kernel_init": nn.initializers.normal(i.attn),
                                  "out_kernel_init": nn.initializers.normal(i.attn_out)}
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dtype=self.dtype, attention_fn=attention_fn(self.attention_impl),
        name="attn", **inits)(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_2")(x)
    return x + MLP(self.width, dtype=self.dtype, block_init=i, hidden=self.mlp_dim, activation=self.activation,
                   name="mlp")(y)


class Transformer(nn.Module):
  """A stack of ``ResidualAttentionBlock`` named ``resblocks_{i}``. [B, L, D] → [B, L, D]."""

  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None
  block_init: BlockInit | None = None
  mlp_dim: int | None = None  # MLP hidden width; None: 4·width
  activation: str = "quick_gelu"
  ln_eps: float = LN_EPS

  @nn.compact
  def __call__(self, x, mask=None):
    block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    for i in range(self.layers):
      x = block_cls(self.width, self.heads, self.dtype, self.attention_impl, block_init=self.block_init,
                    mlp_dim=self.mlp_dim, activation=self.activation, ln_eps=self.ln_eps,
                    name=f"resblocks_{i}")(x, mask)
    return x
