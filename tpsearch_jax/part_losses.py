"""Ranking losses of the part model with a choice of mining and reduction (``config.loss.ranking_mining`` /
``ranking_reduction``); the lineage version (random semi-hard negative, summed) is ``losses.triplet_ranking_loss`` /
``losses.cmr_loss``, which these call unchanged for mining="semi_hard".

S_ab = cos(v_a, t_b) (norms +1e-8); image anchors use S, text anchors Sᵀ; m'_a the anchor's hinge margin (m, or
CMR's max(m·score, floor)). Positives of anchor a: every b with y_b = y_a (its own pair included); negatives: y_n ≠ y_a.

| mining | per-anchor loss ℓ_a |
|---|---|
| semi_hard | [m'_a − S_aa + S_{a,n*}]_+ with a random semi-hard n* (lineage; see losses.triplet_ranking_loss) |
| batch_all | mean over every (positive p, negative n) pair of [m'_a − S_ap + S_an]_+ (0 without a negative) |
| batch_hard | [m'_a − min_p S_ap + max_n S_an]_+ (0 without a negative) |

Reduction: "sum" = Σ over anchors and both directions (and parts); "mean" = that sum / (2 · N · pieces), N the
number of valid rows, so the term is the mean per-anchor loss whatever the batch size and number of pieces.
Row mask ``valid`` as in ``losses``: padding rows are neither anchors, positives nor negatives and leave N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tpsearch_jax import losses
from tpsearch_jax.losses import _check_valid, _commonality_scores, _cosine_eps, _f32, _pad_rows

MININGS = ("semi_hard", "batch_all", "batch_hard")
REDUCTIONS = ("sum", "mean")


def check_ranking_options(mining: str, reduction: str) -> None:
  """Raises ValueError naming the config field of an unknown mining or reduction."""
  if mining not in MININGS:
    raise ValueError(f"config.loss.ranking_mining must be one of {MININGS}, got {mining!r}")
  if reduction not in REDUCTIONS:
    raise ValueError(f"config.loss.ranking_reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _anchor_losses(s: jax.Array, pids: jax.Array, hinge: jax.Array, mining: str, valid) -> jax.Array:
  """Per-anchor losses [B] of one direction (rows = anchors) for batch_all / batch_hard; 0 for padding anchors."""
  same = pids[:, None] == pids[None, :]
  cols = jnp.ones_like(same) if valid is None else jnp.broadcast_to(valid[None, :], same.shape)
  pos, neg = same & cols, ~same & cols
  has_neg = jnp.any(neg, axis=1)
  if mining == "batch_all":
    h = jax.nn.relu(hinge[:, None, None] - s[:, :, None] + s[:, None, :])  # [anchor, positive, negative]
    pairs = pos[:, :, None] & neg[:, None, :]
    count = jnp.sum(pairs, axis=(1, 2)).astype(jnp.float32)
    per = jnp.sum(jnp.where(pairs, h, 0.0), axis=(1, 2)) / jnp.maximum(count, 1.0)
  else:
    hardest_pos = jnp.min(jnp.where(pos, s, jnp.inf), axis=1)
    hardest_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1)
    per = jax.nn.relu(hinge - jnp.where(has_neg, hardest_pos, 0.0) + jnp.where(has_neg, hardest_neg, 0.0))
  per = jnp.where(has_neg, per, 0.0)
  return per if valid is None else jnp.where(valid, per, 0.0)


def _count(valid, b: int) -> jax.Array:
  return jnp.float32(b) if valid is None else jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def ranking_loss(image_feats, text_feats, pids, key, margin=0.2, mining="semi_hard", reduction="sum",
                 hinge_margins=None, valid=None):
  """Bidirectional ranking loss. image_feats, text_feats [B, D] (f32/bf16), pids int [B], key PRNG key (semi_hard
  only), hinge_margins None or (image-anchor [B], text-anchor [B]), valid bool [B] | None → f32 [].

  mining / reduction: see the module docstring; semi_hard + sum is ``losses.triplet_ranking_loss`` exactly.
  """
  check_ranking_options(mining, reduction)
  v, t = _f32(image_feats, text_feats)
  pids = jnp.asarray(pids)
  b = v.shape[0]
  valid = _check_valid("ranking_loss", valid, b)
  if mining == "semi_hard":
    total = losses.triplet_ranking_loss(v, t, pids, key, margin=margin, hinge_margins=hinge_margins, valid=valid)
  else:
    if v.ndim != 2 or v.shape != t.shape or pids.shape != (b,):
      raise ValueError(f"ranking_loss: image_feats {v.shape}, text_feats {t.shape} must be [B, D], pids {pids.shape} "
                       "[B]")
    h_img, h_txt = (None, None) if hinge_margins is None else hinge_margins
    h_img = jnp.full((b,), margin, jnp.float32) if h_img is None else jnp.asarray(h_img, jnp.float32)
    h_txt = jnp.full((b,), margin, jnp.float32) if h_txt is None else jnp.asarray(h_txt, jnp.float32)
    s = _cosine_eps(_pad_rows(v, valid), _pad_rows(t, valid))
    total = (jnp.sum(_anchor_losses(s, pids, h_img, mining, valid))
             + jnp.sum(_anchor_losses(s.T, pids, h_txt, mining, valid)))
  return total / (2.0 * _count(valid, b)) if reduction == "mean" else total


def cmr_ranking_loss(image_parts, text_parts, pids, key, margin=0.2, floor=0.05, commonality="prob",
                     image_part_logits=None, text_part_logits=None, tau=0.5, mining="semi_hard", reduction="sum",
                     valid=None):
  """CMR with a choice of mining and reduction. image_parts, text_parts [B, P, D], pids int [B], key; part logits
  [B, P, K] for commonality="prob"; valid bool [B] | None → f32 [].

  Per part i the hinge margin of anchor a is m'_{a,i} = max(m·score_{a,i}, floor) (``losses.cmr_loss``); the
  triplets of part i are mined as ``mining`` says; summed over anchors, directions and parts ("sum") or that sum /
  (2·N·P) ("mean"). semi_hard + sum is ``losses.cmr_loss`` exactly (same keys, same draws).
  """
  check_ranking_options(mining, reduction)
  vp, tp = _f32(image_parts, text_parts)
  if vp.ndim != 3 or vp.shape != tp.shape:
    raise ValueError(f"cmr_ranking_loss: image_parts {vp.shape} and text_parts {tp.shape} must both be [B, P, D]")
  b, p = vp.shape[:2]
  pids = jnp.asarray(pids)
  valid = _check_valid("cmr_ranking_loss", valid, b)
  kwargs = dict(margin=margin, floor=floor, commonality=commonality, image_part_logits=image_part_logits,
                text_part_logits=text_part_logits, tau=tau, valid=valid)
  if mining == "semi_hard":
    total = losses.cmr_loss(vp, tp, pids, key, **kwargs)
  else:
    vp, tp = _pad_rows(vp, valid), _pad_rows(tp, valid)
    sc_img = _commonality_scores(vp, image_part_logits, pids, commonality, tau, "cmr_ranking_loss", valid)
    sc_txt = _commonality_scores(tp, text_part_logits, pids, commonality, tau, "cmr_ranking_loss", valid)
    m_img, m_txt = jnp.maximum(margin * sc_img, floor), jnp.maximum(margin * sc_txt, floor)  # [B, P]

    def one_part(v, t, mi, mt):
      return ranking_loss(v, t, pids, None, margin, mining, "sum", (mi, mt), valid)

    total = jnp.sum(jax.vmap(one_part, in_axes=(1, 1, 1, 1))(vp, tp, m_img, m_txt))
  return total / (2.0 * p * _count(valid, b)) if reduction == "mean" else total
