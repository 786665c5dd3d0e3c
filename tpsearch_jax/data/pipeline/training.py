"""Train pipeline: a screened, tokenized train table turned into sampler-ordered numpy batches.

Step s covers global batch s of the sampler's epoch order (``samplers.py``: a pure function of (seed, epoch)); each
process takes rows [p·b, (p+1)·b) of it, b = global_batch_size // process_count. Randomness is drawn in numpy per step
for the whole global batch (augmentation parameters and MLM masks, from (seed, step)) and then sliced. Hence the
stream is a pure function of (seed, step), resuming at ``start_step`` costs one epoch order, and the global batch
does not depend on the process count. Images are screened and text is tokenized once, when a ``TrainPipeline`` is
built, so its epoch length (after skipped files) is known before any tf.data graph exists.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tpsearch_jax.data import image_check, masking, samplers
from tpsearch_jax.models import text_tokenizers
from tpsearch_jax.data.pipeline import checks, image_ops, options, sources

RECORD_FIELDS = ("pid", "image_id", "image_path", "caption")


@dataclasses.dataclass(frozen=True)
class TrainTable:
  """The training examples that passed the image screen, captions tokenized."""

  keys: np.ndarray  # object [N] image key of each example (the image path, in the source's form)
  pids: np.ndarray  # int32 [N]
  image_ids: np.ndarray  # int32 [N]
  caption_ids: np.ndarray  # int32 [N, L]


def _field(record: Any, index: int, name: str) -> Any:
  value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
  if value is None:
    raise ValueError(f"train record {index} has no field {name!r}: {record!r}")
  return value


def train_table(records: Sequence[Any], config_data: Any, source: sources.FolderImages | sources.TfdsImages,
                ) -> tuple[TrainTable, dict[str, int]]:
  """records [M] (pid, image_id, image_path, caption) -> (table of the N kept examples, what the screen skipped:
  {"missing": images, "corrupt": images, "captions_dropped": M − N})."""
  records = list(records)
  if not records:
    raise ValueError("no training records")
  fields = {n: [_field(r, i, n) for i, r in enumerate(records)] for n in RECORD_FIELDS}
  fields["image_path"] = [source.key(p) for p in fields["image_path"]]
  keep, dropped = checks.screen(fields["image_path"], config_data, f"train split ({source.where})", source.check)
  fields = {n: [v for v, k in zip(vals, keep) if k] for n, vals in fields.items()}
  start = time.perf_counter()
  caption_ids = text_tokenizers.caption_tokenizer(config_data)(fields["caption"], int(config_data.context_length))
  logging.info("tokenized %d captions in %.1f s", len(caption_ids), time.perf_counter() - start)
  table = TrainTable(np.array(fields["image_path"], object), np.array(fields["pid"], np.int32),
                     np.array(fields["image_id"], np.int32), caption_ids)
  return table, {**image_check.count_kinds(dropped), "captions_dropped": len(records) - len(table.keys)}


def _sampler(table: TrainTable, config_data: Any, global_batch_size: int, seed: int):
  drop_last = bool(config_data.drop_last)
  if config_data.identity_sampler:
    if not drop_last:
      raise ValueError("config.data.drop_last=False (a short last batch) is implemented for the random sampler only; "
                       "the identity sampler always fills whole batches")
    return samplers.IdentitySampler(table.pids, global_batch_size, int(config_data.num_instances), seed)
  return samplers.RandomSampler(len(table.pids), global_batch_size, seed, drop_last)


class TrainPipeline:
  """The train data of one run: images screened and captions tokenized once, at construction.

  ``steps_per_epoch``, ``num_examples`` (after skipped files), ``num_skipped`` (captions dropped) and ``skipped``
  ({"missing": images, "corrupt": images, "captions_dropped": captions}, including what reading the annotation
  dropped when ``records`` is ``Annotations.train``) are known right away;
  ``iterator(start_step)`` builds the tf.data stream of this process's batches from ``start_step`` on. Batch (B =
  global_batch_size // process_count): images float32 [B, H, W, 3], caption_ids / mlm_ids / mlm_labels int32 [B, L],
  pids / image_ids int32 [B]; with ``data.drop_last=False`` also valid bool [B] (False on the padding rows of the
  short last batch of each epoch, whose mlm_labels are 0; see ``samplers.py``).
  """

  def __init__(self, records: Sequence[Any], config_data: Any, global_batch_size: int, seed: int, *,
               process_index: int = 0, process_count: int = 1):
    options.require_fields(config_data, options.TRAIN_FIELDS, "train pipeline")
    if global_batch_size <= 0 or global_batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(f"global batch {global_batch_size} / process {process_index} of {process_count} is invalid")
    options.init_tf()
    self.config_data = config_data
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index = process_index
    self.local_batch_size = global_batch_size // process_count
    self.source = sources.image_source(config_data, "train")
    self.table, screened = train_table(records, config_data, self.source)
    self.skipped = image_check.add_counts(getattr(records, "skipped", None), screened)
    self.num_skipped = self.skipped["captions_dropped"]
    self.indexer = samplers.StepIndexer(_sampler(self.table, config_data, self.global_batch_size, self.seed))
    self.steps_per_epoch = self.indexer.sampler.steps_per_epoch
    self.with_valid = not self.indexer.sampler.drop_last
    self.num_examples = len(self.table.keys)
    self._ops = image_ops.ImageOps(config_data.image_size, config_data.normalization)
    self._keys = tf.constant(self.table.keys.astype(str))

  def local_indices(self, step: int) -> np.ndarray:
    """step -> int64 [local_batch_size] example indices this process loads."""
    lo = self.process_index * self.local_batch_size
    return self.indexer.global_batch(int(step))[lo:lo + self.local_batch_size]

  def _step_images(self, step) -> tuple[np.ndarray, ...]:
    lo, local = self.process_index * self.local_batch_size, self.local_batch_size
    params = image_ops.augment_params(self.seed, int(step), self.global_batch_size, self._ops.size, self.config_data)
    return (self.local_indices(step), *(params[k][lo:lo + local] for k in image_ops.PARAM_NAMES))

  def _step_text(self, step) -> tuple[np.ndarray, ...]:
    lo, local, table = self.process_index * self.local_batch_size, self.local_batch_size, self.table
    indices = self.indexer.global_batch(int(step))
    ids = table.caption_ids[indices]  # the whole global batch, so masking does not depend on the process count
    if text_tokenizers.masks_tokens(self.config_data):
      mlm_ids, mlm_labels = masking.mask_tokens(ids, np.random.default_rng([self.seed % 2**63, int(step), 1]))
    else:  # BERT ids: no MLM masking path (the MLM head is CLIP-only); the masked copy equals the caption
      mlm_ids, mlm_labels = ids.copy(), np.zeros_like(ids)
    valid = self.indexer.global_valid(int(step))
    mlm_labels = np.where(valid[:, None], mlm_labels, 0).astype(np.int32)  # padding rows: nothing to predict
    ids, mlm_ids, mlm_labels, indices, valid = (a[lo:lo + local] for a in (ids, mlm_ids, mlm_labels, indices, valid))
    caption_ids = mlm_ids if self.config_data.caption_uses_mlm_ids else ids
    return caption_ids, mlm_ids, mlm_labels, table.pids[indices], table.image_ids[indices], valid

  def dataset(self, start_step: int = 0) -> tf.data.Dataset:
    """Infinite tf.data.Dataset of this process's batches (see the class docstring) from ``start_step`` on."""
    local, length, cfg = self.local_batch_size, self.table.caption_ids.shape[1], self.config_data

    def images_tf(step):
      out = tf.numpy_function(self._step_images, [step], [tf.int64, tf.bool, tf.int32, tf.int32, tf.float32],
                              stateful=False)
      shapes = [[local], [local], [local, 2], [local, 4], [local, 3]]
      return tuple(tf.ensure_shape(t, s) for t, s in zip(out, shapes))

    def text_tf(step):
      out = tf.numpy_function(self._step_text, [step], [tf.int32] * 5 + [tf.bool], stateful=False)
      shapes = [[local, length]] * 3 + [[local]] * 3
      names = ("caption_ids", "mlm_ids", "mlm_labels", "pids", "image_ids", "valid")
      batch = {n: tf.ensure_shape(t, s) for n, t, s in zip(names, out, shapes)}
      if not self.with_valid:
        del batch["valid"]
      return batch

    def image_tf(index, *params):
      encoded = self.source.read(tf.gather(self._keys, index))
      return self._ops.train(encoded, dict(zip(image_ops.PARAM_NAMES, params)), cfg)

    steps = tf.data.Dataset.counter(int(start_step))
    images = (steps.map(images_tf).unbatch().map(image_tf, num_parallel_calls=options.parallel_calls(cfg))
              .batch(local, drop_remainder=True))
    text = steps.map(text_tf)
    dataset = tf.data.Dataset.zip(images, text).map(lambda im, tx: {"images": im, **tx})
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options.dataset_options(cfg))

  def iterator(self, start_step: int = 0) -> checks.BatchIterator:
    """Python iterator of numpy batches for steps start_step, start_step + 1, …; same (seed, step) -> same batch.

    A file that fails to decode mid-stream raises ``ImageDecodeError`` naming it.
    """
    batch_keys = lambda k: self.table.keys[self.local_indices(start_step + k)]  # noqa: E731
    return checks.BatchIterator(self.dataset(start_step).as_numpy_iterator(), batch_keys, self.source.problem,
                                steps_per_epoch=self.steps_per_epoch, num_examples=self.num_examples)


def train_iterator(records: Sequence[Any], config_data: Any, global_batch_size: int, seed: int, start_step: int = 0,
                   *, process_index: int = 0, process_count: int = 1) -> checks.BatchIterator:
  """Numpy train batches for steps start_step, start_step + 1, … (``TrainPipeline(...).iterator(start_step)``).

  Batch (B = global_batch_size // process_count): images float32 [B, H, W, 3], caption_ids / mlm_ids / mlm_labels
  int32 [B, L], pids / image_ids int32 [B]. The iterator also tells ``steps_per_epoch`` and ``num_examples`` (after
  any skipped files). A file that fails to decode mid-stream raises ``ImageDecodeError`` naming it.
  """
  pipeline = TrainPipeline(records, config_data, global_batch_size, seed, process_index=process_index,
                           process_count=process_count)
  return pipeline.iterator(start_step)


def skipped_by_split(train: TrainPipeline | None = None,
                     evals: Mapping[str, tuple[Any, Any]] | None = None) -> dict[str, dict[str, int]]:
  """What the skip rule dropped per split: {"train": {"missing", "corrupt", "captions_dropped"}, "val": {...}, ...}.

  ``train``: a ``TrainPipeline`` (its ``skipped``); ``evals``: split -> (images, texts) ``evaluation.Batches``.
  """
  out = {} if train is None else {"train": dict(train.skipped)}
  return out | {name: dict(batches[0].skipped) for name, batches in (evals or {}).items()}
