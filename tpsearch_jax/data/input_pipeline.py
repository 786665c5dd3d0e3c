"""tf.data input pipelines: numpy train batches (augmented images, captions, MLM targets) and padded eval batches.

The public entry of ``tpsearch_jax.data.pipeline`` (see its package docstring for the pieces). Every setting comes
from ``config.data`` (defaults in ``tpsearch_jax/configs/base.py``); a data block lacking a field the pipeline reads
raises naming it. Images come from the files, or with ``data.use_tfds`` from the TFDS records prepared in
``data.tfds_data_dir`` (same bytes, same decode: the same batches). These modules (and the TFDS builders) are the only
ones that import TensorFlow; they hide the GPUs from TF.

    pipeline = TrainPipeline(ann.train, config.data, global_batch_size, seed)   # screens + tokenizes once
    pipeline.steps_per_epoch, pipeline.num_examples, pipeline.num_skipped
    batches = pipeline.iterator(start_step)
    images, texts = eval_datasets(ann.split("val"), config.data, eval_batch_size)
    skipped_by_split(pipeline, {"val": (images, texts)})  # {"train": {"missing", "corrupt", "captions_dropped"}, …}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tpsearch_jax.data.pipeline.checks import BatchIterator, ImageCheck, ImageDecodeError, verify_images
from tpsearch_jax.data.pipeline.evaluation import Batches, eval_datasets
from tpsearch_jax.data.pipeline.image_ops import augment_params
from tpsearch_jax.data.pipeline.training import TrainPipeline

__all__ = ["BatchIterator", "Batches", "ImageCheck", "ImageDecodeError", "TrainPipeline", "augment_params",
           "eval_datasets", "skipped_by_split", "train_iterator", "verify_images"]


def skipped_by_split(train: TrainPipeline | None = None,
                     evals: Mapping[str, tuple[Batches, Batches]] | None = None) -> dict[str, dict[str, int]]:
  """What the skip rule dropped per split: {"train": {"missing": images, "corrupt": images, "captions_dropped": n},
  "val": {...}, ...} for the pipelines given (``TrainPipeline.skipped``, ``Batches.skipped`` of each eval split)."""
  out = {} if train is None else {"train": dict(train.skipped)}
  return out | {name: dict(batches[0].skipped) for name, batches in (evals or {}).items()}


def train_iterator(records: Sequence[Any], config_data: Any, global_batch_size: int, seed: int, start_step: int = 0,
                   *, process_index: int = 0, process_count: int = 1) -> BatchIterator:
  """Numpy train batches for steps start_step, start_step + 1, … (``TrainPipeline(...).iterator(start_step)``).

  Batch (B = global_batch_size // process_count): images float32 [B, H, W, 3], caption_ids / mlm_ids / mlm_labels
  int32 [B, L], pids / image_ids int32 [B]. The iterator also tells ``steps_per_epoch`` and ``num_examples`` (after
  any skipped files). A file that fails to decode mid-stream raises ``ImageDecodeError`` naming it.
  """
  pipeline = TrainPipeline(records, config_data, global_batch_size, seed, process_index=process_index,
                           process_count=process_count)
  return pipeline.iterator(start_step)
