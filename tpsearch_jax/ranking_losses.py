"""Ranking losses: the SSAN → LGUR → PLOT triplet loss with random semi-hard negatives, the commonality-based margin
ranking loss (CMR) of the part model, and both with a choice of mining and reduction (``config.loss.ranking_mining``
/ ``ranking_reduction``). Pure jax.numpy, float32 scalars, randomness only through an explicit key; the row mask
``valid`` as in ``losses``: padding rows are neither anchors, positives nor negatives and leave N.

| function | reproduces |
|---|---|
| triplet_ranking_loss | SSAN/LGUR/PLOT ranking loss, random semi-hard negatives (the lineage's) |
| cmr_loss | commonality-based margin ranking (per-part triplets, per-anchor margins; the lineage's) |
| ranking_loss | triplet_ranking_loss with a choice of mining and reduction |
| cmr_ranking_loss | cmr_loss with a choice of mining and reduction |

S_ab = cos(v_a, t_b) (norms +1e-8); image anchors use S, text anchors Sᵀ; m'_a the anchor's hinge margin (m, or
CMR's max(m·score, floor)). Positives of anchor a: every b with y_b = y_a (its own pair included); negatives: y_n ≠ y_a.

| mining | per-anchor loss ℓ_a |
|---|---|
| semi_hard | [m'_a − S_aa + S_{a,n*}]_+ with a random semi-hard n* (triplet_ranking_loss / cmr_loss exactly) |
| batch_all | mean over every (positive p, negative n) pair of [m'_a − S_ap + S_an]_+ (0 without a negative) |
| batch_hard | [m'_a − min_p S_ap + max_n S_an]_+ (0 without a negative) |

Reduction: "sum" = Σ over anchors and both directions (and parts); "mean" = that sum / (2 · N · pieces), N the
number of valid rows, so the term is the mean per-anchor loss whatever the batch size and number of pieces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tpsearch_jax.loss_inputs import as_f32, check_pair, check_valid, pad_rows
from tpsearch_jax.reductions import max_along, min_along

_F32 = jnp.float32
MININGS = ("semi_hard", "batch_all", "batch_hard")
REDUCTIONS = ("sum", "mean")


def check_ranking_options(mining: str, reduction: str) -> None:
  """Raises ValueError naming the config field of an unknown mining or reduction."""
  if mining not in MININGS:
    raise ValueError(f"config.loss.ranking_mining must be one of {MININGS}, got {mining!r}")
  if reduction not in REDUCTIONS:
    raise ValueError(f"config.loss.ranking_reduction must be one of {REDUCTIONS}, got {reduction!r}")


# ---------------------------------------------------------------------------------------------------------------
# The lineage: random semi-hard negatives, summed (SSAN -> LGUR -> PLOT; commonality margins)


def _cosine_eps(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos with +1e-8 on the norms (SSAN/PLOT). a [B, D], b [B, D] -> [B, B]."""
  a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)
  b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-8)
  return a @ b.T


def mine_semi_hard_negatives(similarity, pids, key, margin=0.2, valid=None):
  """Random semi-hard negative per anchor row. similarity [B, B] (row a = anchor a), pids int [B], key, valid bool
  [B] or None -> (negative index int32 [B], found bool [B]).

  Candidates of anchor a: n with y_n ≠ y_a and 0 < S_an − S_aa + m < m; one is drawn uniformly (argmax of uniform
  noise over the candidates, noise U = jax.random.uniform(key, [B, B])). found[a] is False when a has no candidate
  (the index is then meaningless). Works on stop-gradient values.

  valid: only valid anchors find negatives and only valid rows are candidates; the noise of the pair (a, n) is
  U'[r_a·N + r_n] with U' = jax.random.uniform(key, [B²]), r the rank of a row among the valid rows and N their
  number. With every row valid that is U itself; with padding rows anywhere it is the noise the unmasked call on the
  N-row sub-batch uses (JAX's partitionable threefry, the default: element [i, j] of a uniform of shape [N, N] is
  element i·N + j of one of shape [B²]), so the padded batch draws the sub-batch's negatives sample for sample.
  """
  s = jax.lax.stop_gradient(jnp.asarray(similarity).astype(_F32))
  pids = jnp.asarray(pids)
  b = s.shape[0]
  valid = check_valid("mine_semi_hard_negatives", valid, b)
  h = s - jnp.diag(s)[:, None] + margin
  cand = (pids[:, None] != pids[None, :]) & (h > 0) & (h < margin)
  if valid is None:
    noise = jax.random.uniform(key, s.shape)
  else:
    cand = cand & valid[:, None] & valid[None, :]
    rank = jnp.cumsum(valid.astype(jnp.int32)) - 1
    count = jnp.sum(valid.astype(jnp.int32))
    flat = jnp.clip(rank[:, None] * count + rank[None, :], 0, b * b - 1)
    noise = jax.random.uniform(key, (b * b,))[flat]
  neg = jnp.argmax(jnp.where(cand, noise, -1.0), axis=1).astype(jnp.int32)
  return neg, jnp.any(cand, axis=1)


def _directional_ranking(similarity, pids, key, margin, hinge_margins, valid):
  """Σ_a [m'_a − S_aa + S_{a,n*_a}]_+ over anchors with a semi-hard negative, or the single fallback triplet.
  valid bool [B] | None: anchors, negatives and the fallback (last valid anchor, lowest-index valid negative) are
  valid rows."""
  b = similarity.shape[0]
  neg, found = mine_semi_hard_negatives(similarity, pids, key, margin, valid=valid)
  rows = jnp.arange(b)
  pos_s = jnp.diag(similarity)
  hinge = jax.nn.relu(hinge_margins - pos_s + similarity[rows, neg])
  mined = jnp.sum(jnp.where(found, hinge, 0.0))
  if valid is None:
    last = b - 1
    other = pids != pids[last]
  else:
    last = b - 1 - jnp.argmax(valid[::-1])  # the last valid anchor
    other = (pids != pids[last]) & valid
  fb_neg = jnp.argmax(other)  # lowest-index (valid) negative of the last anchor
  fb = jax.nn.relu(hinge_margins[last] - pos_s[last] + similarity[last, fb_neg])
  use_fb = jnp.logical_not(jnp.any(found)) & jnp.any(other)
  return mined + jnp.where(use_fb, fb, 0.0)


def _margins(hinge, b, margin, name):
  if hinge is None:
    return jnp.full((b,), margin, _F32)
  hinge = jnp.asarray(hinge).astype(_F32)
  if hinge.shape != (b,):
    raise ValueError(f"{name}: hinge margins {hinge.shape} must be [B] = ({b},)")
  return hinge


def triplet_ranking_loss(image_feats, text_feats, pids, key, margin=0.2, hinge_margins=None, valid=None):
  """Bidirectional ranking loss with random semi-hard negatives. image_feats, text_feats [B, D] (f32/bf16), pids int
  [B], key PRNG key, hinge_margins None or (image-anchor [B], text-anchor [B]), valid bool [B] or None -> f32 [].

  S_ab = cos(v_a, t_b) (norms +1e-8); per direction (S for image anchors, Sᵀ for text anchors) each anchor a takes a
  random semi-hard negative n*_a (mined with ``margin``; positive = its own pair a) and
  L = Σ_a [m'_a − S_aa + S_{a,n*_a}]_+ summed over both directions (not averaged), m'_a = hinge margin (default m).
  Anchors without a semi-hard negative are skipped; if no anchor of a direction has one, that direction contributes
  the single fallback triplet (last anchor, its lowest-index negative); a single-identity batch gives 0.
  Randomness: image anchors mine with jax.random.split(key)[0], text anchors with [1] (mine_semi_hard_negatives).
  valid: anchors, positives, negatives and the fallback triplet come from the valid rows only; the draws depend on
  the valid rows' order only, so a padded batch gives the loss of its valid sub-batch with the same key, sample for
  sample (mine_semi_hard_negatives).
  """
  v, t = as_f32(image_feats, text_feats)
  pids = jnp.asarray(pids)
  check_pair("triplet_ranking_loss", v, t, pids)
  b = v.shape[0]
  valid = check_valid("triplet_ranking_loss", valid, b)
  h_img, h_txt = (None, None) if hinge_margins is None else hinge_margins
  h_img = pad_rows(_margins(h_img, b, margin, "triplet_ranking_loss"), valid, 0.0)
  h_txt = pad_rows(_margins(h_txt, b, margin, "triplet_ranking_loss"), valid, 0.0)
  k_img, k_txt = jax.random.split(key)
  s = _cosine_eps(pad_rows(v, valid), pad_rows(t, valid))
  return (_directional_ranking(s, pids, k_img, margin, h_img, valid)
          + _directional_ranking(s.T, pids, k_txt, margin, h_txt, valid))


def _commonality_scores(parts, logits, pids, commonality, tau, name, valid):
  """Per-anchor score [B, P] (stop-gradient): classifier probability of y_a, or 1 − frequency of similar others
  (the others: valid rows only when ``valid``)."""
  b, p = parts.shape[:2]
  if commonality == "prob":
    if logits is None:
      raise ValueError(f"{name}: commonality='prob' needs image_part_logits and text_part_logits [B, P, K]")
    logits = jnp.asarray(logits).astype(_F32)
    if logits.shape[:2] != (b, p):
      raise ValueError(f"{name}: part logits {logits.shape} must be [B, P, K] with B, P = {b}, {p}")
    prob = jax.nn.softmax(pad_rows(logits, valid, 0.0), axis=-1)
    score = jnp.take_along_axis(prob, jnp.broadcast_to(pids[:, None, None], (b, p, 1)).astype(jnp.int32), -1)[..., 0]
  elif commonality == "freq":
    cos = jax.vmap(lambda f: _cosine_eps(f, f), in_axes=1, out_axes=0)(parts)  # [P, B, B]
    other = pids[:, None] != pids[None, :]
    other = (other if valid is None else other & valid[None, :]).astype(_F32)
    count = jnp.sum(other, axis=1)
    similar = jnp.sum((cos > tau) * other[None], axis=2) / jnp.maximum(count, 1.0)[None]
    score = (1.0 - similar).T
  else:
    raise ValueError(f"{name}: commonality must be 'prob' or 'freq', got {commonality!r}")
  return jax.lax.stop_gradient(score)


def cmr_loss(image_parts, text_parts, pids, key, margin=0.2, floor=0.05, commonality="prob", image_part_logits=None,
             text_part_logits=None, tau=0.5, valid=None):
  """Commonality-based margin ranking loss. image_parts, text_parts [B, P, D] (f32/bf16), pids int [B], key;
  part logits [B, P, K] for commonality="prob"; valid bool [B] or None -> f32 [].

  For each part i: the triplet procedure of triplet_ranking_loss on S^(i)_ab = cos(f_v^{a,i}, f_t^{b,i}), mining with
  the base margin m, hinge margin m'_{a,i} = max(m·score_{a,i}, floor); score from the image part for image anchors
  and the text part for text anchors; summed over anchors, directions and parts. score (stop-gradient):
  "prob" = softmax(part logits)[y_a]; "freq" = 1 − fraction of other-id samples whose same-part intra-modal cosine
  exceeds tau. The commonality formula is not published; both candidates are inferences. pids must be classifier
  indices in [0, K) for "prob". Randomness: part i uses jax.random.split(key, P)[i], split again into image/text keys
  as in triplet_ranking_loss. valid: the triplets of every part as in triplet_ranking_loss (same draws as the valid
  sub-batch), and the "freq" frequency counts valid others only.
  """
  vp, tp = as_f32(image_parts, text_parts)
  pids = jnp.asarray(pids)
  if vp.ndim != 3 or vp.shape != tp.shape:
    raise ValueError(f"cmr_loss: image_parts {vp.shape} and text_parts {tp.shape} must both be [B, P, D]")
  if pids.shape != vp.shape[:1]:
    raise ValueError(f"cmr_loss: pids {pids.shape} must be [B] with B = {vp.shape[0]}")
  valid = check_valid("cmr_loss", valid, vp.shape[0])
  vp, tp = pad_rows(vp, valid), pad_rows(tp, valid)
  sc_img = _commonality_scores(vp, image_part_logits, pids, commonality, tau, "cmr_loss", valid)
  sc_txt = _commonality_scores(tp, text_part_logits, pids, commonality, tau, "cmr_loss", valid)
  m_img = pad_rows(jnp.maximum(margin * sc_img, floor), valid, 0.0)
  m_txt = pad_rows(jnp.maximum(margin * sc_txt, floor), valid, 0.0)
  keys = jax.random.split(key, vp.shape[1])

  def one_part(v, t, k, mi, mt):
    k_img, k_txt = jax.random.split(k)
    s = _cosine_eps(v, t)
    return (_directional_ranking(s, pids, k_img, margin, mi, valid)
            + _directional_ranking(s.T, pids, k_txt, margin, mt, valid))

  per_part = jax.vmap(one_part, in_axes=(1, 1, 0, 1, 1))(vp, tp, keys, m_img, m_txt)
  return jnp.sum(per_part)


# ---------------------------------------------------------------------------------------------------------------
# Any mining, any reduction


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
    hardest_pos = min_along(jnp.where(pos, s, jnp.inf), axis=1)
    hardest_neg = max_along(jnp.where(neg, s, -jnp.inf), axis=1)
    per = jax.nn.relu(hinge - jnp.where(has_neg, hardest_pos, 0.0) + jnp.where(has_neg, hardest_neg, 0.0))
  per = jnp.where(has_neg, per, 0.0)
  return per if valid is None else jnp.where(valid, per, 0.0)


def _count(valid, b: int) -> jax.Array:
  return jnp.float32(b) if valid is None else jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def ranking_loss(image_feats, text_feats, pids, key, margin=0.2, mining="semi_hard", reduction="sum",
                 hinge_margins=None, valid=None):
  """Bidirectional ranking loss. image_feats, text_feats [B, D] (f32/bf16), pids int [B], key PRNG key (semi_hard
  only), hinge_margins None or (image-anchor [B], text-anchor [B]), valid bool [B] | None → f32 [].

  mining / reduction: see the module docstring; semi_hard + sum is ``triplet_ranking_loss`` exactly.
  """
  check_ranking_options(mining, reduction)
  v, t = as_f32(image_feats, text_feats)
  pids = jnp.asarray(pids)
  b = v.shape[0]
  valid = check_valid("ranking_loss", valid, b)
  if mining == "semi_hard":
    total = triplet_ranking_loss(v, t, pids, key, margin=margin, hinge_margins=hinge_margins, valid=valid)
  else:
    if v.ndim != 2 or v.shape != t.shape or pids.shape != (b,):
      raise ValueError(f"ranking_loss: image_feats {v.shape}, text_feats {t.shape} must be [B, D], pids {pids.shape} "
                       "[B]")
    h_img, h_txt = (None, None) if hinge_margins is None else hinge_margins
    h_img = jnp.full((b,), margin, jnp.float32) if h_img is None else jnp.asarray(h_img, jnp.float32)
    h_txt = jnp.full((b,), margin, jnp.float32) if h_txt is None else jnp.asarray(h_txt, jnp.float32)
    s = _cosine_eps(pad_rows(v, valid), pad_rows(t, valid))
    total = (jnp.sum(_anchor_losses(s, pids, h_img, mining, valid))
             + jnp.sum(_anchor_losses(s.T, pids, h_txt, mining, valid)))
  return total / (2.0 * _count(valid, b)) if reduction == "mean" else total


def cmr_ranking_loss(image_parts, text_parts, pids, key, margin=0.2, floor=0.05, commonality="prob",
                     image_part_logits=None, text_part_logits=None, tau=0.5, mining="semi_hard", reduction="sum",
                     valid=None):
  """CMR with a choice of mining and reduction. image_parts, text_parts [B, P, D], pids int [B], key; part logits
  [B, P, K] for commonality="prob"; valid bool [B] | None → f32 [].

  Per part i the hinge margin of anchor a is m'_{a,i} = max(m·score_{a,i}, floor) (``cmr_loss``); the
  triplets of part i are mined as ``mining`` says; summed over anchors, directions and parts ("sum") or that sum /
  (2·N·P) ("mean"). semi_hard + sum is ``cmr_loss`` exactly (same keys, same draws).
  """
  check_ranking_options(mining, reduction)
  vp, tp = as_f32(image_parts, text_parts)
  if vp.ndim != 3 or vp.shape != tp.shape:
    raise ValueError(f"cmr_ranking_loss: image_parts {vp.shape} and text_parts {tp.shape} must both be [B, P, D]")
  b, p = vp.shape[:2]
  pids = jnp.asarray(pids)
  valid = check_valid("cmr_ranking_loss", valid, b)
  kwargs = dict(margin=margin, floor=floor, commonality=commonality, image_part_logits=image_part_logits,
                text_part_logits=text_part_logits, tau=tau, valid=valid)
  if mining == "semi_hard":
    total = cmr_loss(vp, tp, pids, key, **kwargs)
  else:
    vp, tp = pad_rows(vp, valid), pad_rows(tp, valid)
    sc_img = _commonality_scores(vp, image_part_logits, pids, commonality, tau, "cmr_ranking_loss", valid)
    sc_txt = _commonality_scores(tp, text_part_logits, pids, commonality, tau, "cmr_ranking_loss", valid)
    m_img, m_txt = jnp.maximum(margin * sc_img, floor), jnp.maximum(margin * sc_txt, floor)  # [B, P]

    def one_part(v, t, mi, mt):
      return ranking_loss(v, t, pids, None, margin, mining, "sum", (mi, mt), valid)

    total = jnp.sum(jax.vmap(one_part, in_axes=(1, 1, 1, 1))(vp, tp, m_img, m_txt))
  return total / (2.0 * p * _count(valid, b)) if reduction == "mean" else total
