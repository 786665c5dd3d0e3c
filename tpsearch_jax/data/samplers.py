"""Epoch orders for training: a shuffled pass or identity-balanced batches, both a pure function of (seed, epoch).

Epoch length (``config.data.drop_last``): True = ⌊N/B⌋ global batches, the remainder of the shuffled order dropped
(every batch full, one compiled train step); False = ⌈N/B⌉, the reference's PyTorch ``drop_last=False`` (CUHK-PEDES:
68,126 captions at B = 64 → 1,065 batches, the last one holding 30): the short last batch is padded to B by repeating
its own examples and comes with a ``valid`` row mask, so the train step keeps one shape and each batch-level loss that
honours the mask equals the loss of the 30-example batch (the trade-off against a second compiled step for the short
shape: one program, and every loss honours the mask — ``objectives.VALID_MASK_TERMS``). Random sampler only.
Either way a step maps to (epoch, batch) without replaying earlier epochs and resuming costs one epoch order.
"""

from __future__ import annotations

import functools

import numpy as np


def steps_per_epoch(num_examples: int, global_batch_size: int, drop_last: bool = True) -> int:
  """Global batches in one pass over ``num_examples``: ⌊N/B⌋ full ones (drop_last) or ⌈N/B⌉ (the last one short)."""
  if global_batch_size <= 0:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
  steps = num_examples // global_batch_size if drop_last else -(-num_examples // global_batch_size)
  if steps == 0:
    raise ValueError(f"{num_examples} training examples cannot fill one global batch of {global_batch_size}")
  return steps


def _rng(seed: int, epoch: int) -> np.random.Generator:
  return np.random.default_rng([seed % 2**63, epoch])


class RandomSampler:
  """Each epoch: a fresh permutation of all examples, truncated to whole global batches unless ``drop_last=False``."""

  def __init__(self, num_examples: int, global_batch_size: int, seed: int, drop_last: bool = True):
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.drop_last = drop_last
    self.steps_per_epoch = steps_per_epoch(num_examples, global_batch_size, drop_last)

  def epoch_order(self, epoch: int) -> np.ndarray:
    """-> int64 [min(steps_per_epoch * global_batch_size, num_examples)] example indices."""
    return _rng(self.seed, epoch).permutation(self.num_examples)[:self.steps_per_epoch * self.global_batch_size]


class IdentitySampler:
  """Global batches of N identities × K instances (K = ``num_instances``, N = batch // K), identities distinct.

  Per epoch and identity, its examples are shuffled and cut into groups of K (an identity with fewer than K examples
  is filled up by drawing with replacement; a trailing partial group is dropped). Batches take N random identities
  that still have groups left. When fewer than N such identities remain before the epoch has its
  ``steps_per_epoch`` batches, the groups are rebuilt from the same generator and filling continues.
  """

  def __init__(self, pids: np.ndarray, global_batch_size: int, num_instances: int, seed: int):
    pids = np.asarray(pids)
    if num_instances <= 0 or global_batch_size % num_instances:
      raise ValueError(f"global batch {global_batch_size} is not a multiple of num_instances={num_instances}")
    self.ids_per_batch = global_batch_size // num_instances
    self.by_pid = [np.flatnonzero(pids == p) for p in np.unique(pids)]
    if len(self.by_pid) < self.ids_per_batch:
      raise ValueError(f"identity sampler needs {self.ids_per_batch} identities per batch, data has "
                       f"{len(self.by_pid)}")
    self.num_instances = num_instances
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.drop_last = True  # every batch is N identities × K
    self.steps_per_epoch = steps_per_epoch(len(pids), global_batch_size)

  def _groups(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
    k, groups = self.num_instances, []
    for members in self.by_pid:
      members = rng.choice(members, k, replace=True) if len(members) < k else rng.permutation(members)
      groups.append([members[i:i + k] for i in range(0, len(members) - k + 1, k)])
    return groups

  def epoch_order(self, epoch: int) -> np.ndarray:
    """-> int64 [steps_per_epoch * global_batch_size]; every consecutive K indices share one identity."""
    rng, batches = _rng(self.seed, epoch), []
    while len(batches) < self.steps_per_epoch:
      groups = self._groups(rng)
      available = [i for i, g in enumerate(groups) if g]
      while len(available) >= self.ids_per_batch and len(batches) < self.steps_per_epoch:
        chosen = rng.choice(available, self.ids_per_batch, replace=False)
        batches.append(np.concatenate([groups[i].pop() for i in chosen]))
        available = [i for i in available if groups[i]]
    return np.concatenate(batches).astype(np.int64)


class StepIndexer:
  """Maps a global step to the example indices of its global batch; keeps the current epoch's order cached.

  A short last batch (``drop_last=False``) is padded to the global batch size by cycling through its own indices;
  ``global_valid`` marks the real rows.
  """

  def __init__(self, sampler: RandomSampler | IdentitySampler):
    self.sampler = sampler
    self._order = functools.lru_cache(maxsize=2)(sampler.epoch_order)

  def _real(self, step: int) -> np.ndarray:
    epoch, batch = divmod(int(step), self.sampler.steps_per_epoch)
    size = self.sampler.global_batch_size
    return self._order(epoch)[batch * size:(batch + 1) * size]

  def global_batch(self, step: int) -> np.ndarray:
    """step -> int64 [global_batch_size] example indices (a short batch padded with repeats of its own)."""
    real = self._real(step)
    size = self.sampler.global_batch_size
    return real if len(real) == size else real[np.arange(size) % len(real)]

  def global_valid(self, step: int) -> np.ndarray:
    """step -> bool [global_batch_size]: True for the real rows of ``global_batch(step)``, False for the padding."""
    return np.arange(self.sampler.global_batch_size) < len(self._real(step))
