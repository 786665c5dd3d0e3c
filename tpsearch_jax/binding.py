"""Does the part model bind? Measures of its outputs against ground truth (numpy only; the inputs come from
``evaluate_binding``). Each has a chance level that a model without binding gets.

- ``foreground_auc``: the foreground map as a score for "this patch is the person" (AUC per image, averaged);
  chance 0.5.
- ``stripe_coverage``: the share of stripe i's rows each body region covers, averaged over images.
- ``attention_on_region_words``: the attention mass of text part token i on the words of the regions stripe i
  covers; chance: the share of the caption's tokens that are such words.
- ``twin_gap_share``: of the score gap between a caption's own image and its near-twin's, the share from the
  stripe(s) holding the part they differ in; chance: those stripes' weight share of the score.
- ``coarse_cosine``: mean pairwise cosine of the N_D coarse tokens of one sample; 1 = the tokens are one vector.
"""

from __future__ import annotations

import numpy as np


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of ``scores`` [n] for bool ``labels`` [n] (ties count ½); NaN without both classes."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  pos, neg = scores[labels], scores[~labels]
  if not len(pos) or not len(neg):
    return float("nan")
  diff = pos[:, None] - neg[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def foreground_auc(fg: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
  """fg [N, gh·gw] map, mask [N, gh·gw] person share per patch → mean over images of AUC(fg, mask ≥ threshold)."""
  values = [auc(f, m >= threshold) for f, m in zip(np.asarray(fg), np.asarray(mask))]
  values = [v for v in values if np.isfinite(v)]
  return float(np.mean(values)) if values else float("nan")


def stripe_coverage(rows: np.ndarray, parts: int) -> np.ndarray:
  """rows [N, R, 2] region (top, bottom) as image-height fractions → [parts, R]: the share of stripe i's height
  (stripe i = [i/parts, (i+1)/parts)) covered by region r, averaged over the N images."""
  rows = np.asarray(rows, np.float64)
  edges = np.arange(parts + 1) / parts
  lo = np.maximum(rows[:, None, :, 0], edges[None, :-1, None])
  hi = np.minimum(rows[:, None, :, 1], edges[None, 1:, None])
  return np.mean(np.clip(hi - lo, 0.0, None), axis=0) * parts


def attention_on_region_words(attn: np.ndarray, token_region: np.ndarray, stripe_regions: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
  """attn [N, P, L] (text part token i's attention over the caption tokens, rows sum to 1), token_region [N, L] int
  (region of each token, -1 none, -2 padding or special), stripe_regions bool [P, R] (the regions stripe i covers)
  → (mass [P], chance [P]): mean over captions that hold such words of the attention on them, and of their share
  of the caption's non-padding tokens (the mass of uniform attention)."""
  attn, token_region = np.asarray(attn, np.float64), np.asarray(token_region)
  p = attn.shape[1]
  mass, chance = np.full(p, np.nan), np.full(p, np.nan)
  for i in range(p):
    regions = np.flatnonzero(stripe_regions[i])
    right = np.isin(token_region, regions)
    real = token_region != -2
    has = right.any(axis=1)
    if has.any():
      mass[i] = np.mean(np.sum(attn[has, i] * right[has], axis=1))
      chance[i] = np.mean(right[has].sum(axis=1) / real[has].sum(axis=1))
  return mass, chance


def twin_gap_share(own: np.ndarray, twin: np.ndarray, weights: np.ndarray, target: np.ndarray) -> tuple[float, float]:
  """own, twin [n, M] per-piece cosines of a caption with its own image and with its near-twin's; weights [M] the
  retrieval weights of the pieces; target bool [n, M] the pieces (stripes) holding the part the pair differs in →
  (share, chance): Σ_pairs Σ_target w·Δcos / Σ_pairs Σ_all w·Δcos, and Σ_target w / Σ w averaged over pairs."""
  w = np.asarray(weights, np.float64)
  delta = (np.asarray(own, np.float64) - np.asarray(twin, np.float64)) * w
  target = np.asarray(target, bool)
  total = delta.sum()
  share = float((delta * target).sum() / total) if total != 0 else float("nan")
  return share, float(np.mean((target * w).sum(axis=1) / w.sum()))


def coarse_cosine(coarse: np.ndarray) -> float:
  """coarse [N, N_D, E] → mean over samples and pairs j < k of cos(c_j, c_k) (1: the tokens coincide)."""
  c = np.asarray(coarse, np.float64)
  c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
  n_d = c.shape[1]
  if n_d < 2:
    return float("nan")
  gram = np.einsum("nje,nke->njk", c, c)
  iu = np.triu_indices(n_d, 1)
  return float(gram[:, iu[0], iu[1]].mean())
