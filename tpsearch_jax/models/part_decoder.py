"""Part-level model after Park et al. (arXiv 2501.00318), placed on the CLIP token outputs.

image patches V [B, N, W] (CLS excluded) and text tokens T [B, L, W] (padding masked) each go through a
modality-specific self-attention encoder (learned position embedding on the image side) → M_v, M_t. One decoder —
its weights and its ``num_queries`` learnable query tokens shared by both modalities — cross-attends from the queries
to M_v or M_t → coarse embeddings C [B, N_D, W].

Foreground map: the image cross-attention weights (softmax over the N keys, so each row sums to 1) averaged over
layers, heads and queries sum to 1 over the N positions; they are multiplied by N so that the mean weight is 1 and
uniform attention leaves M_v unchanged. Gradient flows through the map unless ``foreground_grad="stop"``;
``foreground_features="shifted"`` weights M_v − min_c (each channel's minimum over the positions, so the weighted
features are non-negative) and adds min_c back, so a down-weighted position falls to the channel's minimum instead of
0 (with signed features a map peaked on the person turns a channel that is negative there into the background's 0).

Image parts: (map ⊙ M_v) reshaped to the gh×gw grid, rows split into P horizontal stripes (``stripe_bounds``), each
max-pooled → f_v [B, P, W]. Text parts: P further learnable tokens decoded by the same decoder on M_t → f_t [B, P, W];
token i pairs with stripe i (top to bottom). They run in the same decoder pass as the coarse queries, with the query
self-attention kept within each group, which equals two separate runs.

Decoder layer (pre-LN): q += CrossAttn(LN(q), LN_kv(M)); q += SelfAttn(LN(q)); q += MLP(LN(q)); final LayerNorm.
LN_kv is one LayerNorm for both modalities (``kv_norm="shared"``) or one per modality (``"modality"``: PLOT's
template, parameters ``ln_kv_image`` / ``ln_kv_text``). The
attention is written out here (einsum + softmax) so its weights are available for the map.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tpsearch_jax.models.blocks import LN_EPS, MLP, Transformer
from tpsearch_jax.reductions import max_along, min_along


@dataclasses.dataclass(frozen=True)
class PartOptions:
  """Sizes of the part model: N_D coarse queries, P stripes / text part tokens, depths, heads; foreground on/off."""

  num_queries: int = 6
  num_parts: int = 6
  encoder_layers: int = 1
  decoder_layers: int = 1
  heads: int = 8
  foreground: bool = True  # False: stripes pool M_v without the foreground re-weighting (ablation)
  kv_norm: str = "shared"  # decoder K/V LayerNorm: "shared" by both modalities | "modality": one per modality
  foreground_grad: str = "through"  # "through": gradient flows through the map | "stop": stop-gradient on the map
  foreground_features: str = "signed"  # "signed": map ⊙ M_v | "shifted": map ⊙ (M_v − min) + min per channel

  def check(self) -> None:
    """Raises ValueError naming the config field of an unknown choice."""
    for field, choices in (("kv_norm", ("shared", "modality")), ("foreground_grad", ("through", "stop")),
                           ("foreground_features", ("signed", "shifted"))):
      if getattr(self, field) not in choices:
        raise ValueError(f"config.model.part.{field} must be one of {choices}, got {getattr(self, field)!r}")


def stripe_bounds(rows: int, parts: int) -> tuple[tuple[int, int], ...]:
  """[start, stop) row ranges of ``parts`` contiguous horizontal stripes covering rows 0..rows-1 exactly once.

  Stripe i spans rows ⌊i·rows/parts⌋ … ⌊(i+1)·rows/parts⌋ − 1: equal heights when ``parts`` divides ``rows``,
  otherwise heights differ by at most one.
  """
  if not 1 <= parts <= rows:
    raise ValueError(f"cannot split {rows} grid rows into {parts} non-empty stripes (config.model.part.num_parts)")
  edges = [i * rows // parts for i in range(parts + 1)]
  return tuple(zip(edges[:-1], edges[1:]))


def foreground_map(weights: jax.Array) -> jax.Array:
  """Cross-attention weights [layers, B, heads, Q, N] (rows sum to 1) → per-position weights [B, N], mean 1."""
  n = weights.shape[-1]
  return jnp.mean(weights.astype(jnp.float32), axis=(0, 2, 3)) * n


def weight_features(memory: jax.Array, fg: jax.Array, features: str = "signed") -> jax.Array:
  """memory [B, N, W], map fg f32 [B, N] → weighted features [B, N, W]: fg ⊙ M ("signed") or
  fg ⊙ (M − min_n M) + min_n M ("shifted", min over the N positions per image and channel)."""
  w = fg[..., None].astype(memory.dtype)
  if features == "shifted":
    low = min_along(memory, axis=1, keepdims=True)
    return (memory - low) * w + low
  return memory * w


def stripe_max(x: jax.Array, grid: tuple[int, int], parts: int) -> jax.Array:
  """Row-major tokens [B, gh·gw, W] → per-stripe max over rows and columns [B, parts, W]."""
  gh, gw = grid
  x = x.reshape(x.shape[0], gh, gw, x.shape[-1])
  return jnp.stack([max_along(x[:, a:b].reshape(x.shape[0], -1, x.shape[-1]), axis=1)
                    for a, b in stripe_bounds(gh, parts)], axis=1)


class Attention(nn.Module):
  """Multi-head attention. q [B, Q, W], kv [B, K, W], kv_valid bool [B, K] | None, mask bool [Q, K] | None →
  (out [B, Q, W], weights f32 [B, heads, Q, K], softmax over K; masked keys get weight 0, a row with no valid key
  attends uniformly)."""

  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q, kv, kv_valid=None, mask=None):
    if self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by heads {self.heads} (config.model.part.heads)")
    hd = self.width // self.heads
    query = nn.DenseGeneral((self.heads, hd), dtype=self.dtype, name="query")(q)
    key = nn.DenseGeneral((self.heads, hd), dtype=self.dtype, name="key")(kv)
    value = nn.DenseGeneral((self.heads, hd), dtype=self.dtype, name="value")(kv)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32) * hd ** -0.5
    if kv_valid is not None:
      logits = jnp.where(kv_valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value)
    return nn.DenseGeneral(self.width, axis=(-2, -1), dtype=self.dtype, name="out")(out), weights


class DecoderLayer(nn.Module):
  """Queries [B, Q, W] × memory [B, K, W] (valid [B, K] | None; self-attention mask [Q, Q] | None) →
  (queries [B, Q, W], cross weights [B, H, Q, K])."""

  width: int
  heads: int
  dtype: Any = jnp.float32
  kv_norm: str = "shared"

  @nn.compact
  def __call__(self, q, memory, valid=None, self_mask=None, modality: str = "image"):
    ln = lambda name: nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=name)  # noqa: E731
    kv_name = "ln_kv" if self.kv_norm == "shared" else f"ln_kv_{modality}"
    y, weights = Attention(self.width, self.heads, self.dtype, name="cross_attn")(ln("ln_q")(q), ln(kv_name)(memory),
                                                                                  valid)
    q = q + y
    y = ln("ln_self")(q)
    q = q + Attention(self.width, self.heads, self.dtype, name="self_attn")(y, y, mask=self_mask)[0]
    return q + MLP(self.width, dtype=self.dtype, name="mlp")(ln("ln_mlp")(q)), weights


class Decoder(nn.Module):
  """Learned queries [Q, W], memory [B, K, W], valid [B, K] | None → (out [B, Q, W], weights [layers, B, H, Q, K]).

  ``groups`` (sizes summing to Q) restricts the query self-attention to within each consecutive group, so decoding
  the groups together equals decoding each group alone.
  """

  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  kv_norm: str = "shared"

  @nn.compact
  def __call__(self, queries, memory, valid=None, groups: tuple[int, ...] | None = None, modality: str = "image"):
    q = jnp.broadcast_to(queries.astype(self.dtype), (memory.shape[0],) + queries.shape)
    self_mask = None
    if groups is not None:
      if sum(groups) != queries.shape[0]:
        raise ValueError(f"query groups {groups} do not add up to {queries.shape[0]} queries")
      gid = np.repeat(np.arange(len(groups)), groups)
      self_mask = jnp.asarray(gid[:, None] == gid[None, :])
    all_weights = []
    for i in range(self.layers):
      q, w = DecoderLayer(self.width, self.heads, self.dtype, self.kv_norm, name=f"layers_{i}")(
          q, memory, valid, self_mask, modality)
      all_weights.append(w)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_post")(q), jnp.stack(all_weights)


class Encoder(nn.Module):
  """Bidirectional pre-LN transformer + final LayerNorm. x [B, L, W], valid [B, L] | None → [B, L, W]."""

  width: int
  layers: int
  heads: int
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, valid=None):
    mask = None
    if valid is not None:
      b, n = valid.shape
      mask = jnp.broadcast_to(valid[:, None, None, :], (b, 1, n, n))
    x = Transformer(self.width, self.layers, self.heads, self.dtype, self.remat, self.attention_impl,
                    name="transformer")(x.astype(self.dtype), mask)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_post")(x)


class PartModel(nn.Module):
  """Encoders + shared decoder + stripes. Width W = the CLIP joint dimension; ``grid`` = (gh, gw) patch grid."""

  width: int
  grid: tuple[int, int]
  options: PartOptions = PartOptions()
  dtype: Any = jnp.float32
  remat: bool = False
  attention_impl: str | None = None

  def setup(self):
    o, (gh, gw) = self.options, self.grid
    stripe_bounds(gh, o.num_parts)  # fail at build time on an impossible split
    o.check()
    init = nn.initializers.normal(0.02)
    self.image_pos_embed = self.param("image_pos_embed", init, (gh * gw, self.width))
    self.coarse_queries = self.param("coarse_queries", init, (o.num_queries, self.width))
    self.part_queries = self.param("part_queries", init, (o.num_parts, self.width))
    enc = dict(width=self.width, layers=o.encoder_layers, heads=o.heads, dtype=self.dtype, remat=self.remat,
               attention_impl=self.attention_impl)
    self.image_encoder = Encoder(**enc)
    self.text_encoder = Encoder(**enc)
    self.decoder = Decoder(self.width, o.decoder_layers, o.heads, self.dtype, o.kv_norm)

  def encode_image(self, patches: jax.Array) -> dict[str, jax.Array]:
    """patches [B, gh·gw, W] → {"coarse": [B, N_D, W], "part": [B, P, W], "foreground": f32 [B, gh·gw]}."""
    gh, gw = self.grid
    if patches.shape[1] != gh * gw:
      raise ValueError(f"part model expects {gh * gw} image patches ({gh}x{gw} grid), got {patches.shape[1]}")
    memory = self.image_encoder(patches.astype(self.dtype) + self.image_pos_embed.astype(self.dtype))
    self.sow("intermediates", "image_memory", memory)
    coarse, weights = self.decoder(self.coarse_queries, memory, modality="image")
    o = self.options
    if o.foreground:
      fg = foreground_map(weights)
      if o.foreground_grad == "stop":
        fg = jax.lax.stop_gradient(fg)
    else:
      fg = jnp.ones(memory.shape[:2], jnp.float32)
    parts = stripe_max(weight_features(memory, fg, o.foreground_features), self.grid, o.num_parts)
    return {"coarse": coarse, "part": parts, "foreground": fg}

  def encode_text(self, tokens: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """tokens [B, L, W], valid bool [B, L] → {"coarse": [B, N_D, W], "part": [B, P, W]}."""
    memory = self.text_encoder(tokens, valid)
    nq, n_parts = self.options.num_queries, self.options.num_parts
    queries = jnp.concatenate([self.coarse_queries, self.part_queries], axis=0)
    out, weights = self.decoder(queries, memory, valid, groups=(nq, n_parts), modality="text")
    self.sow("intermediates", "text_attention", weights)  # [layers, B, heads, N_D + P, L] (binding metrics)
    return {"coarse": out[:, :nq], "part": out[:, nq:]}
