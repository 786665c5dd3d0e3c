"""Per-example image ops: decode + resize, augmentation parameters (numpy, per global batch), train / eval transforms.

Images are decoded, resized (bilinear, antialiased when shrinking) and augmented per example in parallel TF maps
that receive their random parameters as inputs (a handful of TF ops per image instead of dozens of stateless-random
ones). ``tpsearch_jax.data.preprocess`` reproduces the eval transform without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tpsearch_jax.data import preprocess

PAD_PIXELS = 10
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 3.3)
ERASE_ATTEMPTS = 10
JITTER = 0.1  # brightness, contrast and saturation factors drawn from [1 - JITTER, 1 + JITTER]
PARAM_NAMES = ("flip", "crop", "erase", "jitter")


def decode(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> uint8 [H, W, 3].

  JPEGs use libjpeg's accurate integer DCT, libjpeg's own default and what PIL decodes with (TF's default, the fast
  DCT, differs from PIL by a few grey levels); other formats go through ``tf.io.decode_image``.
  """
  image = tf.cond(tf.io.is_jpeg(encoded),
                  lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                  lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8))
  image.set_shape([None, None, 3])
  return image


def decode_resize(encoded: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
  """Encoded image bytes -> float32 [H, W, 3] in [0, 255], bilinear resize (antialiased when shrinking, like PIL)."""
  image = decode(encoded)
  size = (int(image_size[0]), int(image_size[1]))
  shrinks = (tf.shape(image)[0] > size[0]) | (tf.shape(image)[1] > size[1])
  # When enlarging, the antialiased kernel equals plain bilinear (to float rounding) but costs ~30% more.
  return tf.cond(shrinks, lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
                 lambda: tf.image.resize(image, size, method="bilinear"))


def augment_params(seed: int, step: int, global_batch_size: int, image_size: Sequence[int],
                   config_data: Any) -> dict[str, np.ndarray]:
  """Random augmentation parameters of one global batch, a pure function of (seed, step); n = global_batch_size.

  -> flip bool [n]; crop int32 [n, 2] (top, left offset into the 10-px zero-padded image; 10 = no shift);
  erase int32 [n, 4] (top, left, height, width; height 0 = no erasing); jitter float32 [n, 3] (brightness,
  contrast, saturation factors). Erasing follows torchvision's RandomErasing: up to 10 draws of area fraction in
  ERASE_AREA and log-uniform aspect (height / width) in ERASE_ASPECT, the first that fits is placed uniformly.
  Reads data.augment, data.color_jitter and data.random_erasing.
  """
  height, width = int(image_size[0]), int(image_size[1])
  rng, n = np.random.default_rng([seed % 2**63, int(step), 2]), global_batch_size
  augment = bool(config_data.augment)
  flip = rng.random(n) < 0.5
  crop = rng.integers(0, 2 * PAD_PIXELS + 1, (n, 2)) if augment else np.full((n, 2), PAD_PIXELS)
  jitter = rng.uniform(1 - JITTER, 1 + JITTER, (n, 3))
  if not (augment and config_data.color_jitter):
    jitter = np.ones((n, 3))
  apply = rng.random(n) < (float(config_data.random_erasing) if augment else 0.0)
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


class ImageOps:
  """Per-example image transforms at one output size. Per-channel constants are stored at full [H, W, 3] size:
  TF's elementwise kernels are several times slower when they broadcast a [3] vector."""

  def __init__(self, image_size: Sequence[int], normalization: str = "clip"):
    self.size = (int(image_size[0]), int(image_size[1]))
    full = lambda v: tf.constant(np.broadcast_to(np.asarray(v, np.float32), (*self.size, 3)))  # noqa: E731
    scale, offset, mean = preprocess.norm_constants(normalization)
    self.scale, self.offset, self.fill = full(scale), full(offset), full(mean)

  def normalise(self, image: tf.Tensor) -> tf.Tensor:
    """[H, W, 3] in [0, 255] -> (x / 255 − mean) / std, computed as x · 1/(255·std) + (−mean/std)."""
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

  def train(self, encoded: tf.Tensor, params: dict[str, tf.Tensor], config_data: Any) -> tf.Tensor:
    """Encoded bytes, one row of ``augment_params`` -> float32 [H, W, 3]: resize, flip, pad + crop, [jitter],
    normalise, erase."""
    image = decode_resize(encoded, self.size)
    image = tf.cond(params["flip"], lambda: tf.reverse(image, [1]), lambda: image)
    if config_data.augment:
      padded = tf.pad(image, [[PAD_PIXELS, PAD_PIXELS], [PAD_PIXELS, PAD_PIXELS], [0, 0]])
      image = tf.slice(padded, [params["crop"][0], params["crop"][1], 0], [*self.size, 3])
      if config_data.color_jitter:
        image = self.jitter(image, params["jitter"])
    image = self.erase(self.normalise(image), params["erase"])
    return tf.ensure_shape(image, [*self.size, 3])

  def eval(self, encoded: tf.Tensor) -> tf.Tensor:
    """Encoded bytes -> float32 [H, W, 3]: resize + normalise."""
    return tf.ensure_shape(self.normalise(decode_resize(encoded, self.size)), [*self.size, 3])
