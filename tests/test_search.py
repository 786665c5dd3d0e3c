"""`python -m tpsearch_jax.search`: index an image folder with a saved run, query it, compare with a brute-force
numpy ranking of the model's own embeddings; bad files are named or skipped and counted."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from tpsearch_jax import search
from tpsearch_jax.training import checkpointing
from tpsearch_jax import batch as batch_lib
from tpsearch_jax.training import state as state_lib
from tpsearch_jax import sharding as shd
from tpsearch_jax.data.image_stats import CLIP_MEAN, CLIP_STD
from tpsearch_jax.data.tokenizer import tokenize
from tpsearch_jax.models import build_model

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "synthetic.py")
SENTENCES = ["a man in a red shirt with a black backpack", "a woman wearing a blue skirt", "white shoes"]


def tiny_config():
  spec = importlib.util.spec_from_file_location("configs_synthetic_for_search", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("clip")
  c.model.clip.update(dict(embed_dim=16, patch_size=8, vision_width=32, vision_layers=1, vision_heads=4,
                           context_length=16, text_width=32, text_layers=1, text_heads=4))
  c.data.image_size = (32, 16)
  c.data.context_length = 16
  c.model.num_classes = 4
  c.train.batch_size = 8
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run folder as training leaves it: config.json + an orbax checkpoint of a (randomly initialised) state."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config()
  model = build_model(config)
  mesh = shd.create_mesh()
  state, _, _ = state_lib.create_train_state(config, model, mesh, jax.random.PRNGKey(3))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  ckpt.save(7, state, {"step": 7})
  ckpt.close()
  return workdir, config, model, jax.device_get(state.params)


def write_gallery(root, n: int, size=(40, 20)):
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    sub = os.path.join(root, f"cam{i % 2}")
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, f"{i:03d}.{'png' if i % 3 else 'jpg'}")
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    paths.append(path)
  return sorted(paths)


def test_load_image_matches_numpy_normalisation(tmp_path):
  path = str(tmp_path / "x.png")
  pixels = np.random.default_rng(1).integers(0, 256, (32, 16, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  got = search.load_image(path, (32, 16))  # same size: no resampling, pure normalisation
  want = (pixels / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert CLIP_MEAN[0] == 0.48145466 and CLIP_STD[2] == 0.27577711


def test_index_then_query_matches_bruteforce(run_dir, tmp_path):
  workdir, config, model, params = run_dir
  paths = write_gallery(str(tmp_path / "gallery"), 11)
  index_dir = str(tmp_path / "index")
  meta = search.build(workdir, str(tmp_path / "gallery"), index_dir, batch_size=4)
  assert meta["num_images"] == 11 and meta["num_skipped"] == 0 and meta["checkpoint"].endswith("checkpoints/7")
  with open(os.path.join(index_dir, search.INDEX_PATHS)) as f:
    assert f.read().splitlines() == paths

  # Independent reference: the model applied directly on one device, cosine ranking by numpy.
  images = np.stack([search.load_image(p, (32, 16)) for p in paths])
  gallery = np.asarray(model.apply({"params": params}, images, method="encode_images"), np.float64)
  ids = tokenize(SENTENCES, context_length=16)
  queries = np.asarray(model.apply({"params": params}, ids, method="encode_texts"), np.float64)
  sims = queries @ gallery.T

  results = search.query(index_dir, SENTENCES, k=5)
  for row, hits in zip(sims, results):
    order = np.argsort(-row)[:5]
    assert [p for p, _ in hits] == [paths[i] for i in order]
    # The index stores float16 embeddings: scores agree to float16 precision.
    np.testing.assert_allclose([s for _, s in hits], row[order], atol=3e-3)


def test_corrupt_image_is_named_or_skipped(run_dir, tmp_path):
  workdir = run_dir[0]
  gallery = tmp_path / "gallery"
  write_gallery(str(gallery), 3)
  bad = gallery / "cam0" / "broken.jpg"
  bad.write_bytes(b"not a jpeg at all")
  with pytest.raises(ValueError, match="broken.jpg"):
    search.build(workdir, str(gallery), str(tmp_path / "index_strict"), batch_size=8)
  meta = search.build(workdir, str(gallery), str(tmp_path / "index"), batch_size=8, skip_bad=True)
  assert meta["num_images"] == 3 and meta["num_skipped"] == 1
  with open(tmp_path / "index" / search.INDEX_META) as f:
    assert json.load(f)["num_skipped"] == 1


def test_missing_inputs_say_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    search.load_run(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no image files"):
    search.find_images(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="build the index first"):
    search.query(str(tmp_path), ["x"])
