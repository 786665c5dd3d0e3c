"""BERT (Hugging Face ``BertModel``, e.g. bert-base-uncased) in Flax Linen.

Post-LN encoder layers, exact GELU, learned absolute positions, token-type embeddings and a key-padding attention
mask. Module names mirror the HF checkpoint (``embeddings/word_embeddings``, ``encoder/layer_{i}/attention/self/
query``, ``…/attention/output/LayerNorm``, ``…/intermediate/dense``, ``…/output/dense``, ``pooler/dense``), so the
weight import in ``weights.py`` is one table. No dropout (inference numerics; the retrieval models use none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpsearch_jax.models.blocks import attention_fn, gelu


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture of the encoder. Defaults: bert-base-uncased."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12


def summary(c: BertConfig) -> str:
  """One line for messages."""
  return (f"BERT width {c.hidden_size} x {c.num_layers} layers / {c.num_heads} heads / mlp {c.intermediate_size}, "
          f"vocab {c.vocab_size}, positions {c.max_position_embeddings}, token types {c.type_vocab_size}, ln eps "
          f"{c.layer_norm_eps:g}")


def _init():
  return nn.initializers.normal(0.02)  # BERT's initializer_range


class BertSelfAttention(nn.Module):
  """x [B, L, H], mask bool [B, 1, 1, L] (True = attend) → [B, L, H] (before the output projection)."""

  config: BertConfig
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    hd = c.hidden_size // c.num_heads
    split = lambda t: t.reshape(*t.shape[:-1], c.num_heads, hd)  # noqa: E731
    q, k, v = (split(nn.Dense(c.hidden_size, dtype=self.dtype, kernel_init=_init(), name=n)(x))
               for n in ("query", "key", "value"))
    out = attention_fn(self.attention_impl)(q, k, v, mask=mask, dtype=self.dtype)
    return out.reshape(*x.shape[:-1], c.hidden_size)


class BertOutput(nn.Module):
  """LayerNorm(residual + dense(x)): the post-LN residual of both sub-layers. → [B, L, hidden_size]."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, residual):
    x = nn.Dense(self.config.hidden_size, dtype=self.dtype, kernel_init=_init(), name="dense")(x)
    return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x + residual)


class BertAttention(nn.Module):
  """Self-attention sub-layer with its post-LN residual. [B, L, H] → [B, L, H]."""

  config: BertConfig
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, mask):
    y = BertSelfAttention(self.config, self.dtype, self.attention_impl, name="self")(x, mask)
    return BertOutput(self.config, self.dtype, name="output")(y, x)


class BertIntermediate(nn.Module):
  """dense → GELU. [B, L, H] → [B, L, intermediate_size]."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return gelu(nn.Dense(self.config.intermediate_size, dtype=self.dtype, kernel_init=_init(), name="dense")(x))


class BertLayer(nn.Module):
  """One post-LN encoder layer. x [B, L, H], mask [B, 1, 1, L] → [B, L, H]."""

  config: BertConfig
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, mask):
    x = BertAttention(self.config, self.dtype, self.attention_impl, name="attention")(x, mask)
    y = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
    return BertOutput(self.config, self.dtype, name="output")(y, x)


class BertEmbeddings(nn.Module):
  """ids [B, L], token types [B, L] → LayerNorm(word + position + token type) [B, L, H]."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, token_type_ids):
    c = self.config
    embed = lambda n, rows: nn.Embed(rows, c.hidden_size, embedding_init=_init(), name=n)  # noqa: E731
    positions = jnp.arange(ids.shape[-1])[None]
    x = (embed("word_embeddings", c.vocab_size)(ids) + embed("token_type_embeddings", c.type_vocab_size)(token_type_ids)
         + embed("position_embeddings", c.max_position_embeddings)(positions))
    return nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x.astype(self.dtype))


class BertModel(nn.Module):
  """(input_ids int [B, L], attention_mask [B, L] (1/True = token, 0 = padding; None = all tokens), token_type_ids
  [B, L] | None (zeros)) → (last_hidden_state [B, L, H], pooler_output [B, H] = tanh(dense(hidden[:, 0])))."""

  config: BertConfig = BertConfig()
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
    c = self.config
    length = input_ids.shape[-1]
    if length > c.max_position_embeddings:
      raise ValueError(f"token ids have length {length} > max_position_embeddings {c.max_position_embeddings}")
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.bool_)
    if token_type_ids is None:
      token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
    x = BertEmbeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids)
    mask = attention_mask.astype(jnp.bool_)[:, None, None, :]
    layer_cls = nn.remat(BertLayer) if self.remat else BertLayer
    encoder = _Encoder(c, layer_cls, self.dtype, self.attention_impl, name="encoder")
    x = encoder(x, mask)
    return x, BertPooler(c, self.dtype, name="pooler")(x)


class BertPooler(nn.Module):
  """tanh(dense(hidden[:, 0])): [B, L, H] → [B, H]."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return jax.nn.tanh(nn.Dense(self.config.hidden_size, dtype=self.dtype, kernel_init=_init(), name="dense")(x[:, 0]))


class _Encoder(nn.Module):
  """``layer_{i}`` stack. [B, L, H] → [B, L, H]."""

  config: BertConfig
  layer_cls: Any
  dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, mask):
    for i in range(self.config.num_layers):
      x = self.layer_cls(self.config, self.dtype, self.attention_impl, name=f"layer_{i}")(x, mask)
    return x
