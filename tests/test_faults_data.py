"""Data faults: every image a run reads decodes at start-up (cached), one skip rule for missing and corrupt
files counted per split, and a synthetic_pedes generator that never deletes files it did not write."""

from __future__ import annotations

import io
import json
import logging
import os

import dataset_fixtures as fx
import ml_collections
import numpy as np
import pytest
from PIL import Image

from tpsearch_jax.configs import base
from tpsearch_jax.data import annotations, datasets, image_check
from tpsearch_jax.data.image_check import ImageDecodeError
from tpsearch_jax.data.pipeline.evaluation import eval_datasets
from tpsearch_jax.data.pipeline.training import TrainPipeline, skipped_by_split
from tpsearch_jax.data.synthetic import ensure, generate
from tpsearch_jax.user_errors import UserError

TEST_IMAGE = "test_query/p1_s1.jpg"  # a CUHK fixture test image (record 4, 2 captions)
TRAIN_IMAGE = "cam_a/000_45.jpg"  # a CUHK fixture train image (record 1, 3 captions)


def truncate_jpeg(path: str) -> None:
  """Overwrites ``path`` with the first half of a 64×32 JPEG: the header reads, the pixels do not."""
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), np.uint8)).save(buf, "JPEG")
  with open(path, "wb") as f:
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
  with Image.open(path) as im:  # what a header-only check sees
    assert im.format == "JPEG" and im.size == (32, 64)


RUN_SPLITS = ("train", "val", "test")  # what a training run evaluating on val and test decodes at start-up


def run_data(root: str, **data) -> ml_collections.ConfigDict:
  return fx.data_config(name="cuhk_pedes", root=root, **data)


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
  """Each test starts with no in-process decode memory (the files' caches are what is tested)."""
  monkeypatch.setattr(image_check, "_CACHES", {})


# ------------------------------------------------------------------------------------------------ late failures


def test_truncated_train_jpeg_fails_when_the_pipeline_is_built(tmp_path):
  root = fx.write_cuhk(str(tmp_path))
  truncate_jpeg(os.path.join(root, "imgs", TRAIN_IMAGE))
  ann = annotations.read_annotations("cuhk_pedes", root)
  with pytest.raises(ImageDecodeError, match=r"train split.*000_45\.jpg.*truncated"):
    TrainPipeline(ann.train, fx.data_config(image_size=(8, 4)), 4, seed=0)


def test_bad_test_image_is_found_at_start_up_not_after_training(tmp_path):
  root = fx.write_cuhk(str(tmp_path))
  truncate_jpeg(os.path.join(root, "imgs", TEST_IMAGE))
  with pytest.raises(ImageDecodeError, match=r"CUHK-PEDES test split: 1 of 3 .*p1_s1\.jpg.*skip_corrupt=True"):
    datasets.load_annotations(run_data(root), RUN_SPLITS)
  ann = annotations.read_annotations("cuhk_pedes", root)  # the eval pipeline alone also names it when built
  with pytest.raises(ImageDecodeError, match=r"test split.*p1_s1\.jpg"):
    eval_datasets(ann.split("test"), fx.data_config(image_size=(8, 4)), 4)


def test_build_setup_fails_on_a_bad_test_image_before_building_the_model(tmp_path, monkeypatch):
  from tpsearch_jax.training import config_checks, setup as setup_lib  # noqa: PLC0415 - only this test needs training
  root = fx.write_cuhk(str(tmp_path))
  truncate_jpeg(os.path.join(root, "imgs", TEST_IMAGE))
  config = base.get_config("clip")
  config.data.update(name="cuhk_pedes", root=root, image_size=(32, 16))
  monkeypatch.setattr(setup_lib, "build_model", lambda *a: pytest.fail("the model was built before the data check"))
  with pytest.raises(ImageDecodeError, match=r"test split.*p1_s1\.jpg"):
    setup_lib.build_setup(config_checks.resolve_config(config), train=True)


def test_decode_check_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch, caplog):
  root = fx.write_cuhk(str(tmp_path))
  decoded = []
  decode = image_check.decode_problem
  monkeypatch.setattr(image_check, "decode_problem", lambda s: decoded.append(s) or decode(s))
  with caplog.at_level(logging.INFO):
    datasets.load_annotations(run_data(root), RUN_SPLITS)
  assert len(decoded) == 9 and "CUHK-PEDES test split: 3 image files ok (3 decoded" in caplog.text
  with open(os.path.join(root, image_check.CACHE_NAME)) as f:
    stored = json.load(f)
  assert stored["version"] == 1 and len(stored["files"]) == 9
  st = os.stat(os.path.join(root, "imgs", TEST_IMAGE))
  assert stored["files"][os.path.join(root, "imgs", TEST_IMAGE)] == [st.st_size, st.st_mtime_ns]

  monkeypatch.setattr(image_check, "_CACHES", {})  # a new process: only the file remembers
  decoded.clear()
  datasets.load_annotations(run_data(root), RUN_SPLITS)
  assert decoded == []
  Image.fromarray(fx.image_array(0, (16, 8))).save(os.path.join(root, "imgs", TEST_IMAGE))  # changed: decoded again
  monkeypatch.setattr(image_check, "_CACHES", {})
  datasets.load_annotations(run_data(root), RUN_SPLITS)
  assert decoded == [os.path.join(root, "imgs", TEST_IMAGE)]


def test_unwritable_cache_falls_back_to_checking_uncached(tmp_path, caplog):
  root = fx.write_cuhk(str(tmp_path))
  (tmp_path / "a_file").write_text("")
  cfg = run_data(root)
  cfg.check_cache = str(tmp_path / "a_file" / "cache.json")  # its parent is a file: cannot be created
  with caplog.at_level(logging.WARNING):
    ann = datasets.load_annotations(cfg, RUN_SPLITS)
  assert len(ann.train) == 9 and "cannot write the image check cache" in caplog.text
  cfg.check_cache = "off"
  datasets.load_annotations(cfg, RUN_SPLITS)
  assert image_check.cache_path(cfg) is None and not os.path.exists(os.path.join(root, image_check.CACHE_NAME))


# ------------------------------------------------------------------------------------------------ one skip rule


def test_errors_name_the_exact_flag_and_are_user_errors(tmp_path):
  assert issubclass(ImageDecodeError, UserError) and issubclass(ImageDecodeError, ValueError)
  assert issubclass(annotations.AnnotationError, UserError) and issubclass(annotations.AnnotationError, ValueError)
  missing = fx.write_cuhk(str(tmp_path / "m"), "missing_image")
  with pytest.raises(annotations.AnnotationError, match=r"--config\.data\.skip_missing=True"):
    datasets.load_annotations(run_data(missing), RUN_SPLITS)
  corrupt = fx.write_cuhk(str(tmp_path / "c"), "corrupt_image")
  with pytest.raises(ImageDecodeError, match=r"train split.*000_45\.jpg.*--config\.data\.skip_corrupt=True"):
    datasets.load_annotations(run_data(corrupt), RUN_SPLITS)


@pytest.mark.parametrize("flag", ["skip_missing", "skip_corrupt"])
def test_missing_images_are_skipped_with_their_captions_by_either_flag(tmp_path, flag):
  ann = datasets.load_annotations(run_data(fx.write_cuhk(str(tmp_path), "missing_image"), **{flag: True}), RUN_SPLITS)
  assert ann.skipped == {"train": {"missing": 1, "corrupt": 0, "captions_dropped": 2},
                         "val": {"missing": 2, "corrupt": 0, "captions_dropped": 4},
                         "test": {"missing": 0, "corrupt": 0, "captions_dropped": 0}}
  pipeline = TrainPipeline(ann.train, fx.data_config(image_size=(8, 4)), 4, seed=0)
  assert pipeline.skipped == ann.skipped["train"] and pipeline.num_skipped == 2


def test_corrupt_eval_image_drops_its_captions_and_is_counted(tmp_path, caplog):
  root = fx.write_cuhk(str(tmp_path))
  truncate_jpeg(os.path.join(root, "imgs", TEST_IMAGE))
  cfg = fx.data_config(image_size=(8, 4), skip_corrupt=True)
  split = annotations.read_annotations("cuhk_pedes", root).split("test")  # 3 images, 5 captions
  images, texts = eval_datasets(split, cfg, 4)
  assert (images.num_examples, texts.num_examples) == (2, 3)
  assert images.skipped == texts.skipped == {"missing": 0, "corrupt": 1, "captions_dropped": 2}
  assert images.kept.tolist() == [1, 2] and texts.kept.tolist() == [2, 3, 4]  # indices into the split
  pids = np.concatenate([b["pids"][b["valid"]] for b in texts])
  np.testing.assert_array_equal(pids, [5, 6, 6])  # the p1_s1 captions (pid 5) are gone, p1_s2's (pid 5) stay
  assert "dropped the 2 captions of the 1 skipped images" in caplog.text

  ann = datasets.load_annotations(run_data(root, skip_corrupt=True), RUN_SPLITS)  # the start-up check drops the same
  assert ann.skipped["test"] == {"missing": 0, "corrupt": 1, "captions_dropped": 2}
  images, texts = eval_datasets(ann.split("test"), cfg, 4)
  assert (images.num_examples, texts.num_examples) == (2, 3) and images.skipped == ann.skipped["test"]
  train = TrainPipeline(ann.train, cfg, 4, seed=0)
  assert skipped_by_split(train, {"test": (images, texts)}) == {
      "train": {"missing": 0, "corrupt": 0, "captions_dropped": 0},
      "test": {"missing": 0, "corrupt": 1, "captions_dropped": 2}}


# ------------------------------------------------------------------------------------------------ synthetic folder


def test_generator_refuses_a_folder_with_other_files_and_deletes_nothing(tmp_path):
  root = fx.write_cuhk(str(tmp_path))  # a real dataset: imgs/ and reid_raw.json, no attributes.json
  before = {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}
  for make in (lambda: ensure(root, num_ids=4, images_per_id=1, image_size=(64, 32)),
               lambda: generate(root, num_ids=4, images_per_id=1, image_size=(64, 32), overwrite=True)):
    with pytest.raises(FileExistsError, match=f"{root} is not empty.*pick an empty folder.*or remove it") as e:
      make()
    assert "\n" not in str(e.value)
    assert {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs} == before


def test_interrupted_generation_is_redone_keeping_files_it_did_not_write(tmp_path):
  root = str(tmp_path / "s")
  kw = dict(num_ids=4, images_per_id=1, image_size=(64, 32))
  ensure(root, **kw)
  os.remove(os.path.join(root, "reid_raw.json"))  # as if stopped before the JSON was written
  with open(os.path.join(root, "imgs", "notes.txt"), "w") as f:
    f.write("mine")
  assert ensure(root, **kw)["num_ids"] == 4
  assert open(os.path.join(root, "imgs", "notes.txt")).read() == "mine"
  assert annotations.read_annotations("synthetic_pedes", root).num_classes > 0
