"""Eval pipeline: padded gallery image batches (tf.data) and query caption batches (numpy), split over processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tpsearch_jax.data import image_check
from tpsearch_jax.models import text_tokenizers
from tpsearch_jax.data.pipeline import checks, image_ops, options, sources


class Batches:
  """A re-iterable sequence of numpy eval batches with their counts (``num_examples`` excludes padding).

  ``skipped``: what the split lost to the skip rule, {"missing": images, "corrupt": images, "captions_dropped": n};
  ``kept``: int64 [num_examples], the index in the split (image_paths or captions) of each example, in batch order.
  """

  def __init__(self, make: Callable[[], Iterator[dict[str, np.ndarray]]], num_batches: int, num_examples: int,
               batch_size: int, skipped: dict[str, int] | None = None, kept: np.ndarray | None = None):
    self._make = make
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.batch_size = batch_size  # per process
    self.skipped = image_check.add_counts(skipped)
    self.kept = np.arange(num_examples) if kept is None else np.asarray(kept, np.int64)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self._make()

  def __len__(self) -> int:
    return self.num_batches


def _local_rows(total: int, batch_size: int, process_index: int, process_count: int) -> tuple[np.ndarray, int]:
  """-> (int64 [num_batches * local] row index or -1 for padding, num_batches) for this process's slices."""
  if batch_size <= 0 or batch_size % process_count or not 0 <= process_index < process_count:
    raise ValueError(f"eval batch {batch_size} / process {process_index} of {process_count} is invalid")
  local = batch_size // process_count
  num_batches = max(1, -(-total // batch_size))
  rows = np.full(num_batches * batch_size, -1, np.int64)
  rows[:total] = np.arange(total)
  rows = rows.reshape(num_batches, batch_size)[:, process_index * local:(process_index + 1) * local]
  return rows.reshape(-1), num_batches


def eval_datasets(split: Any, config_data: Any, batch_size: int, *, process_index: int = 0,
                  process_count: int = 1) -> tuple[Batches, Batches]:
  """Eval split -> (image batches, text batches); batch_size is global, each process gets its rows of every batch.

  Image batch: images float32 [b, H, W, 3], pids int32 [b], valid bool [b]. Text batch: caption_ids int32 [b, L],
  pids int32 [b], valid bool [b], index int64 [b] (each caption's position in ``split.captions``, -1 for padding);
  b = batch_size // process_count. Padding rows (valid False, pid -1, zeros) fill
  the last global batch, so every example appears exactly once over all processes. ``split`` has name,
  image_paths [G], image_pids [G], captions [Q], caption_pids [Q], and optionally caption_image_index [Q] (the
  captions of a skipped image are dropped with it) and skipped (what reading dropped) (``annotations.EvalSplit``).
  Both returned ``Batches`` carry the split's ``skipped`` counts.
  """
  name = str(getattr(split, "name", "") or "")
  options.require_fields(config_data, options.IMAGE_FIELDS, f"eval pipeline {name}".strip())
  options.init_tf()
  image_size = tuple(int(v) for v in config_data.image_size)
  ops = image_ops.ImageOps(image_size, config_data.normalization)
  source = sources.image_source(config_data, name)
  keys = [source.key(p) for p in split.image_paths]
  image_pids = np.asarray(split.image_pids, np.int32)
  keep, dropped = checks.screen(keys, config_data, f"{name} split ({source.where})", source.check)
  keys, image_pids = [p for p, k in zip(keys, keep) if k], image_pids[keep]
  captions, caption_pids = list(split.captions), np.asarray(split.caption_pids, np.int32)
  keep_caption = _captions_kept(split, keep, name)
  captions, caption_pids = [c for c, k in zip(captions, keep_caption) if k], caption_pids[keep_caption]
  skipped = image_check.add_counts(getattr(split, "skipped", None), image_check.count_kinds(dropped),
                                   {"captions_dropped": int((~keep_caption).sum())})
  caption_ids = text_tokenizers.caption_tokenizer(config_data)(captions, int(config_data.context_length))
  local = batch_size // process_count

  image_rows, image_batches = _local_rows(len(keys), batch_size, process_index, process_count)
  key_t = tf.constant(np.array(keys + [""], object).astype(str))
  pid_t = tf.constant(np.append(image_pids, -1))

  def load(row):
    valid = row >= 0
    row = tf.where(valid, row, len(keys))  # the appended padding entry
    image = tf.cond(valid, lambda: ops.eval(source.read(tf.gather(key_t, row))),
                    lambda: tf.zeros([*image_size, 3], tf.float32))
    return {"images": image, "pids": tf.gather(pid_t, row), "valid": valid}

  image_ds = (tf.data.Dataset.from_tensor_slices(image_rows)
              .map(load, num_parallel_calls=options.parallel_calls(config_data))
              .batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
              .with_options(options.dataset_options(config_data)))
  key_of = np.array(keys + [""], object)

  def images() -> Iterator[dict[str, np.ndarray]]:
    batch_keys = lambda k: [p for p in key_of[image_rows[k * local:(k + 1) * local]] if p]  # noqa: E731
    return checks.BatchIterator(image_ds.as_numpy_iterator(), batch_keys, source.problem)

  text_rows, text_batches = _local_rows(len(caption_ids), batch_size, process_index, process_count)
  caption_index = np.flatnonzero(keep_caption)

  def texts() -> Iterator[dict[str, np.ndarray]]:
    for k in range(text_batches):
      rows = text_rows[k * local:(k + 1) * local]
      valid = rows >= 0
      yield {"caption_ids": np.where(valid[:, None], caption_ids[rows], 0).astype(np.int32),
             "pids": np.where(valid, caption_pids[rows], -1).astype(np.int32), "valid": valid,
             "index": np.where(valid, caption_index[rows], -1)}

  return (Batches(images, image_batches, len(keys), local, skipped, np.flatnonzero(keep)),
          Batches(texts, text_batches, len(caption_ids), local, skipped, caption_index))


def _captions_kept(split: Any, keep: np.ndarray, name: str) -> np.ndarray:
  """bool [Q]: the captions whose image (caption_image_index) is kept; all of them when nothing was dropped."""
  num_captions = len(split.captions)
  if keep.all():
    return np.ones(num_captions, bool)
  index = getattr(split, "caption_image_index", None)
  if index is None:
    logging.warning("%s split: the split has no caption_image_index; the %d captions are kept although %d images "
                    "were skipped", name, num_captions, int((~keep).sum()))
    return np.ones(num_captions, bool)
  kept = keep[np.asarray(index, np.int64)]
  logging.warning("%s split: dropped the %d captions of the %d skipped images", name, int((~kept).sum()),
                  int((~keep).sum()))
  return kept
