"""TF-free eval preprocessing (data/preprocess.py) against the tf.data eval pipeline's pixels."""

from __future__ import annotations

import collections
import subprocess
import sys

import dataset_fixtures as fx
import numpy as np
import pytest
from PIL import Image

from tpsearch_jax.data.pipeline.evaluation import eval_datasets
from tpsearch_jax.data import preprocess

Split = collections.namedtuple("Split", "name image_pids image_paths caption_pids captions")
TARGET = (48, 24)
# (H, W) of the source images: shrink both, enlarge both, wide (mixed), equal, tall and narrow (mixed), tiny
SIZES = [(100, 37), (20, 11), (30, 60), (48, 24), (97, 13), (5, 3)]


def smooth_image(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
  """A photo-like picture (upsampled noise plus grain), so resampling and JPEG are both exercised."""
  coarse = rng.integers(0, 256, (max(size[0] // 4, 1), max(size[1] // 4, 1), 3), np.uint8)
  base = np.asarray(Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC), np.int16)
  pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
  return Image.fromarray(pixels).convert(mode)


def pipeline_images(paths: list[str], size=TARGET, normalization="clip") -> np.ndarray:
  split = Split("test", np.arange(len(paths)), paths, np.arange(1), ["a person"])
  config = fx.data_config(image_size=size, num_parallel_calls=2, normalization=normalization)
  images, _ = eval_datasets(split, config, len(paths))
  return next(iter(images))["images"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder, rng, paths = tmp_path_factory.mktemp("prep"), np.random.default_rng(0), []
  for i, size in enumerate(SIZES):
    image = smooth_image(rng, size)
    paths.append(str(folder / f"{i}.jpg"))
    image.save(paths[-1], quality=90)
    paths.append(str(folder / f"{i}.png"))
    image.save(paths[-1])
  for mode in ("L", "RGBA", "P"):  # grey, alpha, palette: TF expands / drops to RGB, PIL must do the same
    paths.append(str(folder / f"mode_{mode}.png"))
    smooth_image(rng, (60, 30), mode).save(paths[-1])
  paths.append(str(folder / "grey.jpg"))
  smooth_image(rng, (60, 30), "L").save(paths[-1], quality=85)
  return paths


def test_load_eval_image_equals_the_eval_pipeline(files):
  want = pipeline_images(files)
  for path, ref in zip(files, want):
    got = preprocess.load_eval_image(path, TARGET)
    assert got.shape == (*TARGET, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=path)


def test_encoded_bytes_and_other_target_sizes(files):
  for size in [(32, 16), (384, 128)]:  # 384×128 enlarges every source image; 32×16 shrinks most
    want = pipeline_images(files[:4], size)
    for path, ref in zip(files[:4], want):
      with open(path, "rb") as f:
        np.testing.assert_allclose(preprocess.load_eval_image(f.read(), size), ref, atol=1e-4, rtol=0)


def test_resize_weights_against_direct_formulas():
  """Enlarging: bilinear with half-pixel centres and clamped edges. Shrinking by an integer factor k: the triangle
  kernel of half-width k centred on each output pixel (pixel centres at distance d get weight k − d, normalised)."""
  w = preprocess.resize_weights(4, 10)
  for i in range(10):
    x = min(max((i + 0.5) * 4 / 10 - 0.5, 0), 3)
    lo = int(np.floor(x))
    want = np.zeros(4)
    want[lo] += 1 - (x - lo)
    want[min(lo + 1, 3)] += x - lo
    np.testing.assert_allclose(w[i], want, atol=1e-12)
  w = preprocess.resize_weights(12, 4)  # k = 3: output pixel i centred on input position 3i + 1.5
  for i in range(4):
    d = np.abs(np.arange(12) + 0.5 - (3 * i + 1.5))
    want = np.maximum(3 - d, 0)
    np.testing.assert_allclose(w[i], want / want.sum(), atol=1e-12)
  np.testing.assert_allclose(preprocess.resize_weights(5, 5), np.eye(5), atol=1e-12)


def test_normalisation_constants_and_order():
  x = np.array([[[0, 128, 255]]], np.float32)
  mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
  np.testing.assert_allclose(preprocess.normalise(x), (x / 255 - mean) / std, atol=1e-6)


def test_preprocess_does_not_import_tensorflow():
  code = "import sys, tpsearch_jax.data.preprocess; sys.exit('tensorflow' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("name, mean, std", [
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's ResNet-50 statistics
    ("half", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # google/vit-base-patch16-224's image processor
])
def test_other_normalisations_match_the_formula_and_the_pipeline(files, name, mean, std):
  x = np.array([[[0, 128, 255]]], np.float32)
  np.testing.assert_allclose(preprocess.normalise(x, name), (x / 255 - np.array(mean)) / np.array(std), atol=1e-6)
  want = pipeline_images(files[:3], normalization=name)
  for path, ref in zip(files[:3], want):
    np.testing.assert_allclose(preprocess.load_eval_image(path, TARGET, name), ref, atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="config.data.normalization"):
    preprocess.normalise(x, "imagenet21k")
