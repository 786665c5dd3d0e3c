"""TF set-up, tf.data options and the ``config.data`` fields the pipelines read (defaults live in the config only)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from absl import logging

# config.data fields read by the pipelines (tpsearch_jax/configs/base.py, the c.data block, holds their defaults).
IMAGE_FIELDS = ("name", "root", "image_size", "normalization", "context_length", "skip_corrupt", "skip_missing",
                "verify_images", "use_tfds", "tfds_data_dir", "num_parallel_calls", "num_threads")
# Optional: data.check_cache (image_check.cache_path; "" when absent).
TRAIN_FIELDS = IMAGE_FIELDS + ("caption_uses_mlm_ids", "augment", "random_erasing", "color_jitter",
                               "identity_sampler", "num_instances", "drop_last")
AUGMENT_FIELDS = ("augment", "random_erasing", "color_jitter")


def require_fields(config_data: Any, names: Sequence[str], what: str) -> None:
  """Raises naming every field of ``names`` that ``config_data`` lacks (pass a complete config.data block)."""
  missing = [n for n in names if not hasattr(config_data, n)]
  if missing:
    raise ValueError(f"{what}: config.data lacks field(s) {', '.join(missing)}; pass the complete data block of "
                     "tpsearch_jax/configs/base.py (get_config().data), overriding what differs")


def init_tf() -> None:
  """Hides the GPUs from TensorFlow (the pipelines run on the host; accelerator memory belongs to JAX)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised; it then must not have claimed a GPU
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow was initialised before the input pipeline and can see GPUs.")


def parallel_calls(config_data: Any) -> int:
  """data.num_parallel_calls: a positive count, or one call per core this process may run on for 0 / negative / None."""
  n = config_data.num_parallel_calls
  if n and n > 0:
    return int(n)
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dataset_options(config_data: Any) -> tf.data.Options:
  """Deterministic tf.data options; data.num_threads > 0 gives the dataset a private thread pool of that size.

  The autotuning model is off: its thread sleeps up to 60 s between optimisations and, with TF 2.21, destroying the
  training iterator waited for that sleep to end (up to a minute lost between the last step and the final
  evaluation). Map parallelism comes from ``parallel_calls``; ``prefetch(AUTOTUNE)`` buffers keep their own tuner.
  """
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(int(config_data.num_threads or 0), 0)
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  return options
