"""Image pre-scan before a pipeline is built, and naming the files behind a decode failure in the middle of a stream.

Every check names the offending files; with ``data.skip_corrupt`` the offenders are dropped, counted and logged.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what tf.io.decode_image reads
NUM_CHECK_THREADS = 16

Opener = Callable[[str], "str | IO[bytes] | None"]  # key -> something PIL opens, or None when the image is absent


class ImageDecodeError(ValueError):
  """An image file is missing, unreadable or not decodable; the message names the file(s)."""


@dataclasses.dataclass(frozen=True)
class ImageCheck:
  """Result of ``verify_images``: how many files were checked and the offenders as (path, reason)."""

  checked: int
  bad: list[tuple[str, str]]

  def message(self, limit: int = 10) -> str:
    head = "; ".join(f"{p}: {r}" for p, r in self.bad[:limit])
    more = f" (and {len(self.bad) - limit} more)" if len(self.bad) > limit else ""
    return f"{len(self.bad)} of {self.checked} image files are missing or unreadable: {head}{more}"


def _check_one(key: str, open_image: Opener, full_decode: bool, missing: str) -> str | None:
  source = open_image(key)
  if source is None:
    return missing
  try:
    with Image.open(source) as im:
      if im.format not in TF_FORMATS:
        return f"format {im.format} is not one of {', '.join(TF_FORMATS)}"
      if full_decode:
        im.load()
  except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files; all mean "unreadable"
    return f"{type(e).__name__}: {e}"
  return None


def check_images(keys: Sequence[str], open_image: Opener, *, full_decode: bool = False, missing: str = "missing",
                 num_threads: int = NUM_CHECK_THREADS) -> ImageCheck:
  """Checks each distinct key of keys [N] (header only, or a full PIL decode); ``open_image`` gives what PIL opens,
  None for an absent image (reported with reason ``missing``)."""
  unique = list(dict.fromkeys(keys))
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    reasons = list(pool.map(lambda k: _check_one(k, open_image, full_decode, missing), unique))
  return ImageCheck(len(unique), [(k, r) for k, r in zip(unique, reasons) if r is not None])


def verify_images(paths: Sequence[str], *, full_decode: bool = False,
                  num_threads: int = NUM_CHECK_THREADS) -> ImageCheck:
  """Checks that each distinct file of paths [N] exists and is an image TF can decode (header, or full decode)."""
  return check_images(paths, lambda p: p if os.path.isfile(p) else None, full_decode=full_decode,
                      num_threads=num_threads)


def screen(keys: Sequence[str], config_data: Any, what: str,
           check: Callable[[Sequence[str], bool], ImageCheck]) -> np.ndarray:
  """Pre-scans the images of keys [N] (unless data.verify_images is False); -> bool [N] keep-mask.

  ``check(keys, full_decode)`` does the scan. Raises ``ImageDecodeError`` naming the files unless data.skip_corrupt
  (then the scan fully decodes, and the dropped examples are counted and logged).
  """
  keep = np.ones(len(keys), bool)
  if not config_data.verify_images:
    return keep
  skip = bool(config_data.skip_corrupt)
  start = time.perf_counter()
  result = check(keys, skip)
  logging.info("%s: checked %d image files in %.1f s", what, result.checked, time.perf_counter() - start)
  if not result.bad:
    return keep
  if not skip:
    raise ImageDecodeError(f"{what}: {result.message()}. Fix the files or set data.skip_corrupt=True.")
  bad = {k for k, _ in result.bad}
  keep = np.array([k not in bad for k in keys], bool)
  logging.warning("%s: skipping %d examples (data.skip_corrupt): %s", what, int((~keep).sum()), result.message())
  return keep


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
