"""`python -m tpsearch_jax.search`: index an image folder with a saved run, query it, compare with a brute-force
numpy ranking of the model's own embeddings; bad files are named or skipped and counted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image

import search_fixtures
from tpsearch_jax.search import cli, encoding, grid, image_files, index_files, indexing
from tpsearch_jax.training import runs
from tpsearch_jax.search.fingerprint import FingerprintMismatch
from tpsearch_jax.search.searcher import Searcher, query
from tpsearch_jax.training import checkpointing
from tpsearch_jax import batch as batch_lib
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.options import run_options
from tpsearch_jax import sharding as shd
from tpsearch_jax.models.clip.image_stats import CLIP_MEAN, CLIP_STD
from tpsearch_jax.models.clip.tokenizer import tokenize
from tpsearch_jax.models import build_model

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "synthetic.py")
FLAGS = flags.FLAGS
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
  options = run_options(config)
  model = build_model(options)
  mesh = shd.create_mesh()
  state, _, _ = state_lib.create_train_state(options, model, mesh, jax.random.PRNGKey(3))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  ckpt.save(7, state, {"step": 7})
  ckpt.close()
  return workdir, config, model, jax.device_get(state.params), state


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
  got = encoding.load_image(path, (32, 16))  # same size: no resampling, pure normalisation
  want = (pixels / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
      [0.26862954, 0.26130258, 0.27577711])
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert CLIP_MEAN[0] == 0.48145466 and CLIP_STD[2] == 0.27577711


def test_index_then_query_matches_bruteforce(run_dir, tmp_path):
  workdir, config, model, params, _ = run_dir
  paths = write_gallery(str(tmp_path / "gallery"), 11)
  index_dir = str(tmp_path / "index")
  meta = indexing.build(workdir, str(tmp_path / "gallery"), index_dir, batch_size=4)
  assert meta["num_images"] == 11 and meta["num_skipped"] == 0 and meta["checkpoint"].endswith("checkpoints/7")
  with open(os.path.join(index_dir, index_files.INDEX_PATHS)) as f:
    assert json.load(f) == paths

  # Independent reference: the model applied directly on one device, cosine ranking by numpy.
  images = np.stack([encoding.load_image(p, (32, 16)) for p in paths])
  gallery = np.asarray(model.apply({"params": params}, images, method="encode_images"), np.float64)
  ids = tokenize(SENTENCES, context_length=16)
  queries = np.asarray(model.apply({"params": params}, ids, method="encode_texts"), np.float64)
  sims = queries @ gallery.T

  results = query(index_dir, SENTENCES, k=5)
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
    indexing.build(workdir, str(gallery), str(tmp_path / "index_strict"), batch_size=8)
  meta = indexing.build(workdir, str(gallery), str(tmp_path / "index"), batch_size=8, skip_bad=True)
  assert meta["num_images"] == 3 and meta["num_skipped"] == 1
  with open(tmp_path / "index" / index_files.INDEX_META) as f:
    assert json.load(f)["num_skipped"] == 1


def test_missing_inputs_say_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    runs.load_run(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no image files"):
    image_files.find_images(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="build the index first"):
    query(str(tmp_path), ["x"])


# ---------------------------------------------------------------- incremental index, fingerprint, explanations, grid


def test_reindexing_encodes_only_new_or_changed_files(run_dir, tmp_path):
  workdir = run_dir[0]
  gallery = tmp_path / "gallery"
  write_gallery(str(gallery), 6)
  index_dir = str(tmp_path / "index")
  first = indexing.build(workdir, str(gallery), index_dir, batch_size=4)
  before = index_files.read_index(index_dir)
  assert first["num_encoded"] == 6 and first["fingerprint"] == {"config_sha256": first["fingerprint"]["config_sha256"],
                                                                 "checkpoint": "checkpoints/7", "step": 7, "dim": 16}
  rng = np.random.default_rng(5)
  for name in ("new_a.png", "new_b.png"):
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(gallery / "cam1" / name)
  second = indexing.build(workdir, str(gallery), index_dir, batch_size=4)
  assert second["num_encoded"] == 2 and second["num_images"] == 8
  after = index_files.read_index(index_dir)
  for i, p in enumerate(before["paths"]):  # old rows reused bit for bit
    np.testing.assert_array_equal(after["embeddings"][after["paths"].index(p)], before["embeddings"][i])
  changed = before["paths"][0]
  Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(changed)
  os.remove(gallery / "cam1" / "new_a.png")
  third = indexing.build(workdir, str(gallery), index_dir, batch_size=4)
  assert third["num_encoded"] == 1 and third["num_images"] == 7
  assert not any(p.endswith("new_a.png") for p in index_files.read_index(index_dir)["paths"])


def test_index_of_another_run_is_refused(run_dir, tmp_path):
  workdir = run_dir[0]
  write_gallery(str(tmp_path / "gallery"), 3)
  index_dir = str(tmp_path / "index")
  indexing.build(workdir, str(tmp_path / "gallery"), index_dir, batch_size=8)
  other = str(tmp_path / "other_run")
  shutil.copytree(workdir, other)
  with open(os.path.join(other, "config.json")) as f:
    config = json.load(f)
  config["train"]["log_every_steps"] = 123  # another config: another hash
  with open(os.path.join(other, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(FingerprintMismatch, match=r"built with config [0-9a-f]{16}.*rebuild the index: python -m"):
    Searcher(index_dir, workdir=other, warm=False)
  # The same run trained further (a later checkpoint): the index still loads the step it pins.
  state = run_dir[4]
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  ckpt.save(9, state, {"step": 9})
  ckpt.close()
  try:
    assert Searcher(index_dir, warm=False).run.step == 7
  finally:
    shutil.rmtree(os.path.join(workdir, "checkpoints", "9"))


def test_unreadable_files_are_listed(run_dir, tmp_path):
  gallery = tmp_path / "gallery"
  write_gallery(str(gallery), 2)
  (gallery / "cam1" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  meta = indexing.build(run_dir[0], str(gallery), str(tmp_path / "index"), batch_size=8, skip_bad=True)
  assert [os.path.basename(p) for p, _ in meta["skipped"]] == ["truncated.png"]
  listed = json.loads((tmp_path / "index" / index_files.INDEX_SKIPPED).read_text())
  assert len(listed) == 1 and listed[0][0] == str(gallery / "cam1" / "truncated.png")


def test_part_model_scores_split_exactly_into_pieces(tmp_path_factory, tmp_path):
  """Per-piece cosines from the stored vectors equal those of the model's own embeddings; they sum to the score."""
  run = search_fixtures.trained_run(tmp_path_factory)
  for r in run["records"][:8]:
    os.makedirs(tmp_path / "gallery" / os.path.dirname(r["file_path"]), exist_ok=True)
    shutil.copy(os.path.join(run["imgs"], r["file_path"]), tmp_path / "gallery" / r["file_path"])
  index_dir = str(tmp_path / "index")
  indexing.build(run["workdir"], str(tmp_path / "gallery"), index_dir, batch_size=16)  # the server tests' shape
  searcher = Searcher(index_dir, warm=False)
  caption = run["records"][0]["captions"][0]
  hits = searcher.search([caption], k=4)[0]
  model, params = searcher.run.model, jax.device_get(searcher.run.params)
  images = np.stack([encoding.load_image(h.path, (48, 16)) for h in hits])
  embed = jax.jit(lambda p, x, ids: (model.apply({"params": p}, x, method="image_embeddings"),
                                     model.apply({"params": p}, ids, method="text_embeddings")))
  img, txt = embed(params, images, tokenize([caption], context_length=32))
  unit = lambda x: np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64), axis=-1, keepdims=True)
  for j, h in enumerate(hits):
    pieces = {p["name"]: p for p in h.explanation["pieces"]}
    assert sum(p["contribution"] for p in pieces.values()) == pytest.approx(h.score, abs=2e-3)
    assert pieces["global"]["cosine"] == pytest.approx(float(unit(txt["global"])[0] @ unit(img["global"])[j]),
                                                       abs=4e-3)
    for i in range(3):
      want = float(unit(txt["part"])[0, i] @ unit(img["part"])[j, i])
      assert pieces[f"part_{i + 1}"]["cosine"] == pytest.approx(want, abs=4e-3)
      assert h.explanation["stripes"][i]["cosine"] == pieces[f"part_{i + 1}"]["cosine"]
    np.testing.assert_allclose(searcher.foreground_of(h.id), np.asarray(img["foreground"])[j], rtol=3e-3, atol=3e-3)


def test_cli_query_batch_grid_and_explain(run_dir, tmp_path, capsys):
  write_gallery(str(tmp_path / "gallery"), 5)
  index_dir = str(tmp_path / "index")
  indexing.build(run_dir[0], str(tmp_path / "gallery"), index_dir, batch_size=8)
  queries = tmp_path / "queries.txt"
  queries.write_text("\n".join(SENTENCES) + "\n\n")
  out = str(tmp_path / "grid.png")
  try:
    FLAGS(["search", f"--index={index_dir}", f"--queries={queries}", "--k=3", f"--grid={out}", "--explain"])
    assert cli.main(["search", "query"]) == 0
  finally:
    FLAGS.unparse_flags()
  printed = capsys.readouterr().out
  assert all(s in printed for s in SENTENCES) and printed.count("phrases (score drop without): ") == 9
  assert printed.count("  [read ") == 3 and "Σ w·cos" not in printed  # one piece: nothing to split
  with Image.open(out) as im:
    assert im.width >= 3 * 20 and im.height >= 3 * 160  # 3 rows of 3 results, 160 px high


def test_grid_marks_cells(tmp_path):
  path = write_gallery(str(tmp_path), 1)[0]
  im = grid.render_grid([("a query", [grid.Cell(path, 1, 0.9, mark=True), grid.Cell(path, 2, 0.5, mark=False)])],
                        height=80)
  pixels = np.asarray(im)
  assert (np.abs(pixels - np.asarray(grid.MARK)).sum(-1) == 0).any()
  assert (np.abs(pixels - np.asarray(grid.NO_MARK)).sum(-1) == 0).any()
