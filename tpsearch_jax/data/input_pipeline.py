"""tf.data input pipelines: numpy train batches (augmented images, captions, MLM targets) and padded eval batches.

Train stream. Step s covers global batch s of the sampler's epoch order (``samplers.py``: a pure function of
(seed, epoch)); each process takes rows [p·b, (p+1)·b) of it, b = global_batch_size // process_count. Randomness is
drawn in numpy per step for the whole global batch (augmentation parameters and MLM masks, from (seed, step)) and
then sliced. Hence the stream is a pure function of (seed, step), resuming at ``start_step`` costs one epoch order,
and the global batch does not depend on the process count.

Text is tokenized once up front; per step one numpy call gathers the rows and masks them. Images are decoded,
resized (bilinear, antialiased when shrinking) and augmented per example in parallel TF maps that receive their
random parameters as inputs (a handful of TF ops per image instead of dozens of stateless-random ones).

This is the only module (besides the TFDS builders) that imports TensorFlow; it hides the GPUs from TF.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from tpsearch_jax.data import masking, samplers, tokenizer
from tpsearch_jax.data.image_stats import CLIP_MEAN, CLIP_STD

PAD_PIXELS = 10
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 3.3)
ERASE_ATTEMPTS = 10
JITTER = 0.1  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]
TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what tf.io.decode_image reads
TRAIN_FIELDS = ("pid", "image_id", "image_path", "caption")


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


def _check_one(path: str, full_decode: bool) -> str | None:
  if not os.path.isfile(path):
    return "missing"
  try:
    with Image.open(path) as im:
      if im.format not in TF_FORMATS:
        return f"format {im.format} is not one of {', '.join(TF_FORMATS)}"
      if full_decode:
        im.load()
  except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files; all mean "unreadable"
    return f"{type(e).__name__}: {e}"
  return None


def verify_images(paths: Sequence[str], *, full_decode: bool = False, num_threads: int = 16) -> ImageCheck:
  """Checks that each distinct file exists and is an image TF can decode (header only, or a full PIL decode)."""
  unique = list(dict.fromkeys(paths))
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    reasons = list(pool.map(lambda p: _check_one(p, full_decode), unique))
  return ImageCheck(len(unique), [(p, r) for p, r in zip(unique, reasons) if r is not None])


def _init_tf() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised; it then must not have claimed a GPU
    if tf.config.get_visible_devices("GPU"):
      logging.warning("TensorFlow was initialised before the input pipeline and can see GPUs.")


def _cfg(config_data: Any, name: str, default: Any) -> Any:
  return config_data.get(name, default) if hasattr(config_data, "get") else getattr(config_data, name, default)


def _parallel(config_data: Any) -> int:
  n = _cfg(config_data, "num_parallel_calls", None)
  return tf.data.AUTOTUNE if not n or n < 0 else int(n)


def _options(config_data: Any) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = int(_cfg(config_data, "num_threads", 0) or 0)
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = True
  return options


# ---------------------------------------------------------------------------------------------------- image ops


def _decode(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
  """file path -> float32 [H, W, 3] in [0, 255], bilinear resize (antialiased when shrinking, like PIL)."""
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False, dtype=tf.uint8)
  image.set_shape([None, None, 3])
  shrinks = (tf.shape(image)[0] > image_size[0]) | (tf.shape(image)[1] > image_size[1])
  # When enlarging, the antialiased kernel equals plain bilinear (to float rounding) but costs ~30% more.
  return tf.cond(shrinks, lambda: tf.image.resize(image, image_size, method="bilinear", antialias=True),
                 lambda: tf.image.resize(image, image_size, method="bilinear"))


def augment_params(seed: int, step: int, global_batch_size: int, image_size: Sequence[int],
                   config_data: Any) -> dict[str, np.ndarray]:
  """Random augmentation parameters of one global batch, a pure function of (seed, step); n = global_batch_size.

  -> flip bool [n]; crop int32 [n, 2] (top, left offset into the 10-px zero-padded image; 10 = no shift);
  erase int32 [n, 4] (top, left, height, width; height 0 = no erasing); jitter float32 [n, 3] (brightness,
  contrast, saturation factors). Erasing follows torchvision's RandomErasing: up to 10 draws of area fraction in
  ERASE_AREA and log-uniform aspect (height / width) in ERASE_ASPECT, the first that fits is placed uniformly.
  """
  height, width = int(image_size[0]), int(image_size[1])
  rng, n = np.random.default_rng([seed % 2**63, int(step), 2]), global_batch_size
  augment = bool(_cfg(config_data, "augment", True))
  flip = rng.random(n) < 0.5
  crop = rng.integers(0, 2 * PAD_PIXELS + 1, (n, 2)) if augment else np.full((n, 2), PAD_PIXELS)
  jitter = rng.uniform(1 - JITTER, 1 + JITTER, (n, 3))
  if not (augment and _cfg(config_data, "color_jitter", False)):
    jitter = np.ones((n, 3))
  apply = rng.random(n) < (float(_cfg(config_data, "random_erasing", 0.0)) if augment else 0.0)
  area = height * width * rng.uniform(*ERASE_AREA, (n, ERASE_ATTEMPTS))
  aspect = np.exp(rng.uniform(math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), (n, ERASE_ATTEMPTS)))
  h = np.round(np.sqrt(area * aspect)).astype(np.int64)
  w = np.round(np.sqrt(area / aspect)).astype(np.int64)
  fits = (h < height) & (w < width)
  first = fits.argmax(1)
  h, w = h[np.arange(n), first], w[np.arange(n), first]
  top = np.floor(rng.random(n) * (height - h + 1)).astype(np.int64)
  left = np.floor(rng.random(n) * (width - w + 1)).astype(np.int64)
  erase = np.where((apply & fits.any(1))[:, None], np.stack([top, left, h, w], 1), 0)
  return {"flip": flip, "crop": crop.astype(np.int32), "erase": erase.astype(np.int32),
          "jitter": jitter.astype(np.float32)}


class _ImageOps:
  """Per-example image transforms at one output size. Per-channel constants are stored at full [H, W, 3] size:
  TF's elementwise kernels are several times slower when they broadcast a [3] vector."""

  def __init__(self, image_size: Sequence[int]):
    self.size = (int(image_size[0]), int(image_size[1]))
    full = lambda v: tf.constant(np.broadcast_to(np.asarray(v, np.float32), (*self.size, 3)))  # noqa: E731
    self.scale = full([1 / (255 * s) for s in CLIP_STD])
    self.offset = full([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    self.fill = full(CLIP_MEAN)

  def normalise(self, image: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] in [0, 255] -> (x / 255 − mean) / std."""
    return image * self.scale + self.offset

  def erase(self, image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Fills box = (top, left, height, width) of a normalised image with the raw CLIP mean values (reference quirk)."""
    top, left, h, w = tf.unstack(box)

    def fill():  # slicing + concatenation: ~2x faster than tf.where over [H, W, 3]
      band = image[top:top + h]
      band = tf.concat([band[:, :left], self.fill[:h, left:left + w], band[:, left + w:]], axis=1)
      return tf.concat([image[:top], band, image[top + h:]], axis=0)

    return tf.cond(h > 0, fill, lambda: image)

  def jitter(self, image: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation (fixed order) on [H, W, 3] in [0, 255]."""
    b, c, s = tf.unstack(factors)
    image = tf.clip_by_value(image * b, 0.0, 255.0)
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(image))
    image = tf.clip_by_value((image - mean) * c + mean, 0.0, 255.0)
    gray = tf.image.rgb_to_grayscale(image)
    return tf.clip_by_value((image - gray) * s + gray, 0.0, 255.0)

  def train(self, path: tf.Tensor, params: dict[str, tf.Tensor], config_data: Any) -> tf.Tensor:
    """file path, one row of ``augment_params`` -> float32 [H, W, 3]: resize, flip, pad + crop, [jitter],
    normalise, erase."""
    image = _decode(path, self.size)
    image = tf.cond(params["flip"], lambda: tf.reverse(image, [1]), lambda: image)
    if _cfg(config_data, "augment", True):
      padded = tf.pad(image, [[PAD_PIXELS, PAD_PIXELS], [PAD_PIXELS, PAD_PIXELS], [0, 0]])
      image = tf.slice(padded, [params["crop"][0], params["crop"][1], 0], [*self.size, 3])
      if _cfg(config_data, "color_jitter", False):
        image = self.jitter(image, params["jitter"])
    image = self.erase(self.normalise(image), params["erase"])
    return tf.ensure_shape(image, [*self.size, 3])

  def eval(self, path: tf.Tensor) -> tf.Tensor:
    """file path -> float32 [H, W, 3]: resize + normalise."""
    return tf.ensure_shape(self.normalise(_decode(path, self.size)), [*self.size, 3])


# ---------------------------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class _TrainTable:
  paths: np.ndarray  # object [N]
  pids: np.ndarray  # int32 [N]
  image_ids: np.ndarray  # int32 [N]
  caption_ids: np.ndarray  # int32 [N, L]


def _field(record: Any, index: int, name: str) -> Any:
  value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
  if value is None:
    raise ValueError(f"train record {index} has no field {name!r}: {record!r}")
  return value


def _screen(paths: Sequence[str], config_data: Any, what: str) -> np.ndarray:
  """Pre-scan image files; -> bool [N] keep-mask. Raises naming the files unless data.skip_corrupt."""
  keep = np.ones(len(paths), bool)
  if not _cfg(config_data, "verify_images", True):
    return keep
  skip = bool(_cfg(config_data, "skip_corrupt", False))
  start = time.perf_counter()
  check = verify_images(paths, full_decode=skip)
  logging.info("%s: checked %d image files in %.1f s", what, check.checked, time.perf_counter() - start)
  if not check.bad:
    return keep
  if not skip:
    raise ImageDecodeError(f"{what}: {check.message()}. Fix the files or set data.skip_corrupt=True.")
  bad = {p for p, _ in check.bad}
  keep = np.array([p not in bad for p in paths])
  logging.warning("%s: skipping %d examples (data.skip_corrupt): %s", what, int((~keep).sum()), check.message())
  return keep


def _train_table(records: Sequence[Any], config_data: Any) -> _TrainTable:
  records = list(records)
  if not records:
    raise ValueError("no training records")
  fields = {n: [_field(r, i, n) for i, r in enumerate(records)] for n in TRAIN_FIELDS}
  keep = _screen(fields["image_path"], config_data, "train")
  fields = {n: [v for v, k in zip(vals, keep) if k] for n, vals in fields.items()}
  start = time.perf_counter()
  caption_ids = tokenizer.tokenize(fields["caption"], int(_cfg(config_data, "context_length", 77)))
  logging.info("tokenized %d captions in %.1f s", len(caption_ids), time.perf_counter() - start)
  return _TrainTable(np.array(fields["image_path"], object), np.array(fields["pid"], np.int32),
                     np.array(fields["image_id"], np.int32), caption_ids)


def _sampler(table: _TrainTable, config_data: Any, global_batch_size: int, seed: int):
  if _cfg(config_data, "identity_sampler", False):
    return samplers.IdentitySampler(table.pids, global_batch_size, int(_cfg(config_data, "num_instances", 4)), seed)
  return samplers.RandomSampler(len(table.pids), global_batch_size, seed)


# ---------------------------------------------------------------------------------------------------- train


@dataclasses.dataclass(frozen=True)
class TrainStream:
  """What ``train_stream`` builds: the dataset and the step -> example-index map behind it."""

  dataset: tf.data.Dataset
  indexer: samplers.StepIndexer
  paths: np.ndarray  # object [N] image path of each example
  local_batch_size: int
  process_index: int
  steps_per_epoch: int

  def local_indices(self, step: int) -> np.ndarray:
    """step -> int64 [local_batch_size] example indices this process loads."""
    lo = self.process_index * self.local_batch_size
    return self.indexer.global_batch(step)[lo:lo + self.local_batch_size]


def train_stream(records: Sequence[Any], config_data: Any, global_batch_size: int, seed: int, *, start_step: int = 0,
                 process_index: int = 0, process_count: int = 1) -> TrainStream:
  """Builds the train dataset (see ``train_dataset``) plus the indexing needed to name files in errors."""
  _init_tf()
  if global_batch_size % process_count or not 0 <= process_index < process_count:
    raise ValueError(f"global batch {global_batch_size} / process {process_index} of {process_count} is invalid")
  table = _train_table(records, config_data)
  indexer = samplers.StepIndexer(_sampler(table, config_data, global_batch_size, seed))
  local = global_batch_size // process_count
  lo = process_index * local
  length = table.caption_ids.shape[1]
  uses_mlm_ids = bool(_cfg(config_data, "caption_uses_mlm_ids", False))

  image_size = tuple(config_data.image_size)
  param_names = ("flip", "crop", "erase", "jitter")

  def step_rows(step):
    return indexer.global_batch(int(step))[lo:lo + local]

  def step_images(step):
    params = augment_params(seed, int(step), global_batch_size, image_size, config_data)
    return (step_rows(step), *(params[k][lo:lo + local] for k in param_names))

  def step_text(step):
    indices = indexer.global_batch(int(step))
    ids = table.caption_ids[indices]  # the whole global batch, so masking does not depend on the process count
    mlm_ids, mlm_labels = masking.mask_tokens(ids, np.random.default_rng([seed % 2**63, int(step), 1]))
    ids, mlm_ids, mlm_labels, indices = (a[lo:lo + local] for a in (ids, mlm_ids, mlm_labels, indices))
    caption_ids = mlm_ids if uses_mlm_ids else ids
    return caption_ids, mlm_ids, mlm_labels, table.pids[indices], table.image_ids[indices]

  def images_tf(step):
    out = tf.numpy_function(step_images, [step], [tf.int64, tf.bool, tf.int32, tf.int32, tf.float32],
                            stateful=False)
    shapes = [[local], [local], [local, 2], [local, 4], [local, 3]]
    return tuple(tf.ensure_shape(t, s) for t, s in zip(out, shapes))

  def text_tf(step):
    out = tf.numpy_function(step_text, [step], [tf.int32] * 5, stateful=False)
    shapes = [[local, length]] * 3 + [[local]] * 2
    names = ("caption_ids", "mlm_ids", "mlm_labels", "pids", "image_ids")
    return {n: tf.ensure_shape(t, s) for n, t, s in zip(names, out, shapes)}

  paths = tf.constant(table.paths.astype(str))
  ops = _ImageOps(image_size)

  def image_tf(index, *params):
    return ops.train(tf.gather(paths, index), dict(zip(param_names, params)), config_data)

  steps = tf.data.Dataset.counter(start_step)
  images = (steps.map(images_tf).unbatch().map(image_tf, num_parallel_calls=_parallel(config_data))
            .batch(local, drop_remainder=True))
  text = steps.map(text_tf)
  dataset = tf.data.Dataset.zip(images, text).map(lambda im, tx: {"images": im, **tx})
  dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(config_data))
  return TrainStream(dataset, indexer, table.paths, local, process_index, indexer.sampler.steps_per_epoch)


def train_dataset(records: Sequence[Any], config_data: Any, global_batch_size: int, seed: int, *,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
  """Infinite tf.data.Dataset of this process's train batches, from ``start_step`` on.

  Element (B = global_batch_size // process_count): images float32 [B, H, W, 3], caption_ids / mlm_ids /
  mlm_labels int32 [B, L], pids / image_ids int32 [B].
  """
  return train_stream(records, config_data, global_batch_size, seed, start_step=start_step,
                      process_index=process_index, process_count=process_count).dataset


def train_iterator(records: Sequence[Any], config_data: Any, global_batch_size: int, seed: int, start_step: int = 0,
                   *, process_index: int = 0, process_count: int = 1) -> BatchIterator:
  """Python iterator of numpy train batches for steps start_step, start_step + 1, …; same (seed, step) -> same batch.

  Batches as in ``train_dataset``. The iterator also tells ``steps_per_epoch`` and ``num_examples`` (after any
  skipped files). A file that fails to decode mid-stream raises ``ImageDecodeError`` naming it.
  """
  stream = train_stream(records, config_data, global_batch_size, seed, start_step=start_step,
                        process_index=process_index, process_count=process_count)
  batch_paths = lambda k: stream.paths[stream.local_indices(start_step + k)]  # noqa: E731
  return BatchIterator(stream.dataset.as_numpy_iterator(), batch_paths, steps_per_epoch=stream.steps_per_epoch,
                       num_examples=len(stream.paths))


# ---------------------------------------------------------------------------------------------------- errors


def _decode_problem(path: str) -> str | None:
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except (tf.errors.OpError, ValueError) as e:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return None


class BatchIterator:
  """Iterator of numpy batches that re-raises a decode failure in batch k as ``ImageDecodeError`` naming the
  offending files (looked up in batches k…k+2, as TF reports the error without the path)."""

  def __init__(self, it: Iterator[dict[str, np.ndarray]], batch_paths: Callable[[int], Sequence[str]], *,
               steps_per_epoch: int | None = None, num_examples: int | None = None):
    self._it = it
    self._batch_paths = batch_paths
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
        bad = [(p, r) for p in dict.fromkeys(self._batch_paths(j)) if (r := _decode_problem(p))]
        if bad:
          raise ImageDecodeError("cannot decode image file(s): " + "; ".join(f"{p} ({r})" for p, r in bad)) from e
      raise
    self._k += 1
    return batch


# ---------------------------------------------------------------------------------------------------- eval


class Batches:
  """A re-iterable sequence of numpy eval batches with their counts (``num_examples`` excludes padding)."""

  def __init__(self, make: Callable[[], Iterator[dict[str, np.ndarray]]], num_batches: int, num_examples: int,
               batch_size: int):
    self._make = make
    self.num_batches = num_batches
    self.num_examples = num_examples
    self.batch_size = batch_size  # per process

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self._make()

  def __len__(self) -> int:
    return self.num_batches


def _local_rows(total: int, batch_size: int, process_index: int, process_count: int) -> tuple[np.ndarray, int]:
  """-> (int64 [num_batches * local] row index or -1 for padding, num_batches) for this process's slices."""
  if batch_size % process_count or not 0 <= process_index < process_count:
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
  pids int32 [b], valid bool [b]; b = batch_size // process_count. Padding rows (valid False, pid -1, zeros) fill
  the last global batch, so every example appears exactly once over all processes.
  """
  _init_tf()
  image_size = tuple(config_data.image_size)
  ops = _ImageOps(image_size)
  paths = list(split.image_paths)
  image_pids = np.asarray(split.image_pids, np.int32)
  keep = _screen(paths, config_data, f"eval split {getattr(split, 'name', '')}".strip())
  paths, image_pids = [p for p, k in zip(paths, keep) if k], image_pids[keep]
  caption_ids = tokenizer.tokenize(list(split.captions), int(_cfg(config_data, "context_length", 77)))
  caption_pids = np.asarray(split.caption_pids, np.int32)
  local = batch_size // process_count

  image_rows, image_batches = _local_rows(len(paths), batch_size, process_index, process_count)
  path_t = tf.constant(np.array(paths + [""], object).astype(str))
  pid_t = tf.constant(np.append(image_pids, -1))

  def load(row):
    valid = row >= 0
    row = tf.where(valid, row, len(paths))  # the appended padding entry
    image = tf.cond(valid, lambda: ops.eval(tf.gather(path_t, row)),
                    lambda: tf.zeros([*image_size, 3], tf.float32))
    return {"images": image, "pids": tf.gather(pid_t, row), "valid": valid}

  image_ds = (tf.data.Dataset.from_tensor_slices(image_rows).map(load, num_parallel_calls=_parallel(config_data))
              .batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options(config_data)))
  path_of = np.array(paths + [""], object)

  def images() -> Iterator[dict[str, np.ndarray]]:
    batch_paths = lambda k: [p for p in path_of[image_rows[k * local:(k + 1) * local]] if p]  # noqa: E731
    return BatchIterator(image_ds.as_numpy_iterator(), batch_paths)

  text_rows, text_batches = _local_rows(len(caption_ids), batch_size, process_index, process_count)

  def texts() -> Iterator[dict[str, np.ndarray]]:
    for k in range(text_batches):
      rows = text_rows[k * local:(k + 1) * local]
      valid = rows >= 0
      yield {"caption_ids": np.where(valid[:, None], caption_ids[rows], 0).astype(np.int32),
             "pids": np.where(valid, caption_pids[rows], -1).astype(np.int32), "valid": valid}

  return (Batches(images, image_batches, len(paths), local), Batches(texts, text_batches, len(caption_ids), local))
