"""Image pre-scan before a pipeline is built, and naming the files behind a decode failure in the middle of a stream.

The scan fully decodes every image once (``tpsearch_jax.data.image_check``: thread pool, cached by path, size and
mtime). Every check names the offending files; the skip rule (data.skip_missing / data.skip_corrupt) drops them,
counted per kind and logged, or the error names the flag to set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tpsearch_jax.data import image_check
from tpsearch_jax.data.image_check import ImageCheck, ImageDecodeError

__all__ = ["BatchIterator", "screen"]


def screen(keys: Sequence[str], config_data: Any, what: str,
           check: Callable[[Sequence[str], str], ImageCheck]) -> tuple[np.ndarray, dict[str, str]]:
  """Pre-scans the images of keys [N] (unless data.verify_images is False); -> (bool [N] keep-mask, {dropped key:
  "missing" | "corrupt"}).

  ``check(keys, what)`` does the scan. Offenders the skip rule does not allow raise ``ImageDecodeError`` naming them,
  ``what`` and the flag; the allowed ones are dropped and logged.
  """
  keep = np.ones(len(keys), bool)
  if not config_data.verify_images:
    return keep, {}
  result = check(keys, what)
  dropped = image_check.skip_rule(result, config_data, what)
  if not dropped:
    return keep, {}
  keep = np.array([k not in dropped for k in keys], bool)
  logging.warning("%s: skipping %d examples of %d images (%s): %s", what, int((~keep).sum()), len(dropped),
                  ", ".join(f"{k}: {v}" for k, v in image_check.count_kinds(dropped).items()), result.message())
  return keep, dropped


class BatchIterator:
  """Iterator of numpy batches that re-raises a decode failure in batch k as ``ImageDecodeError`` naming the
  offending files (looked up in batches k…k+2, as TF reports the error without the path).

  ``batch_keys(k)`` -> the image keys of batch k; ``problem(key)`` -> why that image does not decode, or None.
  """

  def __init__(self, it: Iterator[dict[str, np.ndarray]], batch_keys: Callable[[int], Sequence[str]],
               problem: Callable[[str], str | None], *, steps_per_epoch: int | None = None,
               num_examples: int | None = None):
    self._it = it
    self._batch_keys = batch_keys
    self._problem = problem
    self._k = 0
    self.steps_per_epoch = steps_per_epoch
    self.num_examples = num_examples

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except tf.errors.OpError as e:
      for j in range(self._k, self._k + 3):
        bad = [(p, r) for p in dict.fromkeys(self._batch_keys(j)) if (r := self._problem(p))]
        if bad:
          raise ImageDecodeError("cannot decode image file(s): " + "; ".join(f"{p} ({r})" for p, r in bad)) from e
      raise
    self._k += 1
    return batch
