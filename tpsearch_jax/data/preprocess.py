"""Eval-image preprocessing without TensorFlow: the same pixels the tf.data eval pipeline feeds the model.

The eval pipeline (``pipeline/image_ops.py``) decodes with libjpeg's accurate integer DCT (as PIL does), resizes
with TF's bilinear kernel (antialiased when shrinking: ``tf.image.resize(..., antialias=True)`` is ScaleAndTranslate
with a triangle kernel widened by 1/scale) and normalises as x · 1/(255·std) + (−mean/std) in float32. This module
does the same with PIL and numpy, for callers that must not import TensorFlow (search, serving); the tests check it
against the tf.data pipeline (to ~1e-4: TF resizes in float32, this module in float64).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from tpsearch_jax.models.clip.image_stats import CLIP_MEAN, CLIP_STD

# config.data.normalization → (mean, std) of [0, 1] RGB pixels: CLIP's, ImageNet's (torchvision ResNet-50), or 0.5
# (the ImageNet-21k ViT-B/16 of google/vit-base-patch16-224).
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def norm_constants(name: str = "clip") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """config.data.normalization → float32 (scale [3] = 1/(255·std), offset [3] = −mean/std, mean [3]), the
  pipeline's constants, applied in this order (multiply, then add)."""
  if name not in NORMALIZATIONS:
    raise ValueError(f"config.data.normalization must be one of {sorted(NORMALIZATIONS)}, got {name!r}")
  mean, std = NORMALIZATIONS[name]
  return (np.asarray([1 / (255 * s) for s in std], np.float32),
          np.asarray([-m / s for m, s in zip(mean, std)], np.float32), np.asarray(mean, np.float32))


NORM_SCALE, NORM_OFFSET, _ = norm_constants("clip")


def decode_rgb(source: str | os.PathLike | bytes) -> np.ndarray:
  """Image file path or encoded bytes -> uint8 [H, W, 3] (alpha dropped, grey and palette expanded, as TF does)."""
  data = io.BytesIO(source) if isinstance(source, bytes) else source
  with Image.open(data) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """-> float64 [out_size, in_size] rows of TF's triangle-kernel ScaleAndTranslate along one axis.

  Output pixel i samples the input at s = (i + 0.5) · in / out; input pixel j gets weight
  max(0, 1 − |j + 0.5 − s| / k) with k = max(in / out, 1) (antialiasing widens the kernel only when shrinking), rows
  normalised to sum 1. For k = 1 this is bilinear interpolation with half-pixel centres and clamped edges
  (``tf.image.resize`` without antialias).
  """
  scale = out_size / in_size
  kernel_scale = max(1 / scale, 1.0)
  sample = (np.arange(out_size) + 0.5) / scale
  weights = np.maximum(0.0, 1 - np.abs(np.arange(in_size)[None, :] + 0.5 - sample[:, None]) / kernel_scale)
  total = weights.sum(1, keepdims=True)
  return np.where(total > 0, weights / np.where(total > 0, total, 1), 0.0)


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """uint8 or float [H, W, C] -> float32 [h, w, C] in the input's range (bilinear, antialiased when shrinking)."""
  rows = resize_weights(image.shape[0], int(size[0]))
  cols = resize_weights(image.shape[1], int(size[1]))
  out = np.einsum("ih,hwc,jw->ijc", rows, np.asarray(image, np.float64), cols, optimize=True)
  return out.astype(np.float32)


def normalise(image: np.ndarray, normalization: str = "clip") -> np.ndarray:
  """float32 [H, W, 3] in [0, 255] -> float32 (x / 255 − mean) / std, computed as x · scale + offset."""
  scale, offset, _ = norm_constants(normalization)
  return np.asarray(image, np.float32) * scale + offset


def load_eval_image(path: str | os.PathLike | bytes, image_size: Sequence[int],
                    normalization: str = "clip") -> np.ndarray:
  """Image file (or its encoded bytes) -> float32 [H, W, 3], (H, W) = image_size: the eval pipeline's pixels."""
  return normalise(resize(decode_rgb(path), image_size), normalization)
