"""Where encoded images come from: the image files, or the TFDS records of ``tfds_builders`` (data.use_tfds).

Both sources give the same bytes for the same image (the builders store the files untouched) and the pipelines decode
them with the same ops, so batches do not depend on the source. Images are addressed by key: the record's image
path (TFDS: its absolute form, since the records store paths relative to ``<data.root>/imgs``). The TFDS source
reads one split's encoded images once and serves them from an in-memory TF lookup table.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tpsearch_jax.data import image_check, tfds_builders
from tpsearch_jax.data.pipeline import image_ops


def decode_problem(encoded: bytes) -> str | None:
  """Why TF cannot decode these bytes with the pipeline's decode op, or None."""
  try:
    image_ops.decode(tf.constant(encoded))
  except (tf.errors.OpError, ValueError) as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return None


class FolderImages:
  """Encoded images read from their files; the key is the file path. ``cache``: where decoded files are noted."""

  where = "image files"

  def __init__(self, cache: image_check.DecodeCache | None = None):
    self.cache = cache

  def key(self, path: str) -> str:
    return path

  def check(self, keys: Sequence[str], what: str) -> image_check.ImageCheck:
    """Full decode of each distinct key (skipped for files unchanged since they last decoded)."""
    return image_check.check_images(keys, lambda p: p if os.path.isfile(p) else None,
                               fingerprint=image_check.file_fingerprint, cache=self.cache, what=what)

  def read(self, key: tf.Tensor) -> tf.Tensor:
    """key string tensor -> encoded bytes (scalar string)."""
    return tf.io.read_file(key)

  def problem(self, key: str) -> str | None:
    if not os.path.isfile(key):
      return "missing"
    with open(key, "rb") as f:
      return decode_problem(f.read())


class TfdsImages:
  """Encoded images of one prepared TFDS split, held in memory; the key is the absolute image path."""

  def __init__(self, images: dict[str, bytes], where: str, cache: image_check.DecodeCache | None = None):
    if not images:
      raise ValueError(f"{where} holds no images")
    self.images = images
    self.where = where
    self.cache = cache
    keys, values = list(images), list(images.values())
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(np.array(values, object)))
    self._table = tf.lookup.StaticHashTable(init, default_value=b"")

  def key(self, path: str) -> str:
    return os.path.abspath(path)

  def _open(self, key: str) -> io.BytesIO | None:
    data = self.images.get(key)
    return None if data is None else io.BytesIO(data)

  def check(self, keys: Sequence[str], what: str) -> image_check.ImageCheck:
    """Full decode of each distinct key's bytes (skipped for bytes that decoded before: same length and CRC)."""
    return image_check.check_images(keys, self._open, fingerprint=self._fingerprint, cache=self.cache, what=what,
                               missing=f"not in {self.where}")

  def _fingerprint(self, key: str) -> list | None:
    data = self.images.get(key)
    return None if data is None else image_check.bytes_fingerprint(data)

  def read(self, key: tf.Tensor) -> tf.Tensor:
    """key string tensor -> encoded bytes (scalar string; empty for a key not in the split)."""
    return self._table.lookup(key)

  def problem(self, key: str) -> str | None:
    data = self.images.get(key)
    return f"not in {self.where}" if data is None else decode_problem(data)


def image_source(config_data: Any, split: str) -> FolderImages | TfdsImages:
  """The images of ``split`` ("train" | "val" | "test"): files, or with data.use_tfds the prepared TFDS records of
  data.name in data.tfds_data_dir, keyed by <data.root>/imgs/<image_path>."""
  cache = image_check.cache_for(config_data)
  if not config_data.use_tfds:
    return FolderImages(cache)
  builder = tfds_builders.prepared_builder(config_data.name, config_data.tfds_data_dir)
  imgs_dir = os.path.join(os.path.abspath(os.path.expanduser(config_data.root)), "imgs")
  start = time.perf_counter()
  stored = tfds_builders.read_image_bytes(builder, split)
  where = f"TFDS {config_data.name}/{split} in {builder.data_dir}"
  logging.info("%s: read %d encoded images (%.1f MB) in %.1f s", where, len(stored),
               sum(map(len, stored.values())) / 2**20, time.perf_counter() - start)
  return TfdsImages({os.path.abspath(os.path.join(imgs_dir, rel)): data for rel, data in stored.items()}, where,
                    cache)
