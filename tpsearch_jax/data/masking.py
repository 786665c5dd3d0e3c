"""BERT-style token masking for the MLM (implicit relation reasoning) objective, in numpy.

Recipe: a token is eligible when 0 < id < MASK_ID (not padding, mask, SOT or EOT). Each eligible token is selected
with p = 0.15; a selected token becomes MASK_ID with p = 0.8, a uniform random id in [1, MASK_ID − 1] with p = 0.1,
or stays with p = 0.1. Labels hold the original id at selected positions and 0 (ignore) elsewhere. A row with nothing
selected gets position 1 masked and labelled (for an empty caption that is its EOT).
"""

from __future__ import annotations

import numpy as np

from tpsearch_jax.models.clip.tokenizer import MASK_ID

SELECT_PROB = 0.15
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1


def mask_tokens(ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """ids int [..., L] -> (masked ids int32 [..., L], labels int32 [..., L]), drawing from ``rng``."""
  ids = np.asarray(ids, np.int32)
  u = rng.random(ids.shape)
  random_ids = rng.integers(1, MASK_ID, ids.shape, dtype=np.int32)
  selected = (ids > 0) & (ids < MASK_ID) & (u < SELECT_PROB)
  v = u / SELECT_PROB  # uniform on [0, 1) again, given selection
  masked = np.where(selected & (v < MASK_FRACTION), MASK_ID, ids)
  masked = np.where(selected & (v >= MASK_FRACTION) & (v < MASK_FRACTION + RANDOM_FRACTION), random_ids, masked)
  labels = np.where(selected, ids, 0)
  none = ~selected.any(axis=-1)
  labels[..., 1] = np.where(none, ids[..., 1], labels[..., 1])
  masked[..., 1] = np.where(none, MASK_ID, masked[..., 1])
  return masked.astype(np.int32), labels.astype(np.int32)
