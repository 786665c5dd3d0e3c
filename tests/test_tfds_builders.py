"""TFDS builders: a real download_and_prepare from fixture folders round-trips to what read_annotations reads."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds  # a required dependency (pyproject.toml): a broken import fails, never skips

import dataset_fixtures as fx
from tpsearch_jax.data.image_check import ImageDecodeError
from tpsearch_jax.data.pipeline.evaluation import eval_datasets
from tpsearch_jax.data.pipeline.training import TrainPipeline, train_iterator
from tpsearch_jax.data import read_annotations
from tpsearch_jax.data import tfds_builders as tb
from tpsearch_jax.data.synthetic import generate


def _prepare(cls, manual_dir, data_dir):
  builder = cls(data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _read_split(builder, split):
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  return list(tfds.as_numpy(ds))


def _assert_round_trip(builder, ann, splits):
  assert set(builder.info.splits) == set(splits)
  assert builder.info.metadata["num_classes"] == ann.num_classes
  for split in splits:
    got = _read_split(builder, split)
    want = ann.images(split)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
      assert g["image_path"].decode() == w.file_path
      assert [c.decode() for c in g["captions"]] == list(w.captions)
      assert (int(g["pid"]), int(g["raw_id"]), int(g["image_id"])) == (w.pid, w.raw_id, i)
      with open(w.image_path, "rb") as f:
        assert g["image"] == f.read()  # encoded bytes stored untouched
  # the train split expands to exactly read_annotations' per-caption list
  train = [(int(g["pid"]), int(g["image_id"]), os.path.join(ann.imgs_dir, g["image_path"].decode()), c.decode())
           for g in _read_split(builder, "train") for c in g["captions"]]
  assert train == [tuple(r) for r in ann.train]


def test_cuhk_round_trip_and_decoded_pixels(tmp_path):
  root = fx.write_cuhk(str(tmp_path))
  builder = _prepare(tb.CuhkPedes, root, tmp_path / "tfds")
  _assert_round_trip(builder, read_annotations("cuhk_pedes", root), ("train", "val", "test"))
  decoded = list(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)))
  assert (decoded[0]["image"] == fx.image_array(0)).all()  # record 0 is a PNG: lossless
  # a second builder on the same data_dir reuses the prepared records and their metadata
  again = tb.CuhkPedes(data_dir=str(tmp_path / "tfds"))
  assert again.is_prepared() and again.info.metadata["num_classes"] == 3


def test_icfg_has_no_val_split(tmp_path):
  root = fx.write_icfg(str(tmp_path))
  builder = _prepare(tb.IcfgPedes, root, tmp_path / "tfds")
  _assert_round_trip(builder, read_annotations("icfg_pedes", root), ("train", "test"))


def test_load_with_tfds_on_rstp(tmp_path):
  root = fx.write_rstp(str(tmp_path))
  builder = tb.load_with_tfds("rstp_reid", data_dir=str(tmp_path / "tfds"), manual_dir=root)
  _assert_round_trip(builder, read_annotations("rstp_reid", root), ("train", "val", "test"))


def test_synthetic_builder(tmp_path):
  root = str(tmp_path / "synthetic_pedes")
  generate(root, num_ids=6, images_per_id=2, image_size=(64, 32), seed=1)
  builder = _prepare(tb.SyntheticPedes, root, tmp_path / "tfds")
  _assert_round_trip(builder, read_annotations("synthetic_pedes", root), ("train", "val", "test"))


def test_bad_manual_folders_fail_with_the_readers_message(tmp_path):
  root = fx.write_cuhk(str(tmp_path), "missing_image")
  with pytest.raises(Exception, match=r"3 of 9 image files listed in .*reid_raw\.json"):
    _prepare(tb.CuhkPedes, root, tmp_path / "tfds")
  with pytest.raises(AssertionError, match=r"(?s)does not exist.*data_captions\.json"):
    _prepare(tb.RstpReid, str(tmp_path / "absent"), tmp_path / "tfds2")  # TFDS prints our instructions


def test_registered_names_and_instructions():
  for name, cls in tb.BUILDERS.items():
    assert tfds.builder_cls(name) is cls
    assert "imgs/" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS and name in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  with pytest.raises(ValueError, match="unknown dataset"):
    tb.load_with_tfds("cuhk", data_dir="/nonexistent")


def test_command_line_prepares_into_data_dir(tmp_path, capsys):
  root = fx.write_icfg(str(tmp_path))
  tb.main(["--dataset=icfg_pedes", f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"])
  out = capsys.readouterr().out
  assert "train: 4 images" in out and "test: 2 images" in out and "num_classes: 3" in out
  assert tb.IcfgPedes(data_dir=str(tmp_path / "tfds")).is_prepared()


# ---------------------------------------------------------------------------------------------- data.use_tfds


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_use_tfds_pipelines_give_the_image_folder_batches(tmp_path):
  """Train (2 steps, augmented) and eval batches from the TFDS records equal those from the files, element-wise,
  and are read from the records: the image files are moved away before the TFDS pipelines are built."""
  root = fx.write_cuhk(str(tmp_path), size=(40, 20))  # PNG and JPEG files, larger than the 32×16 target
  data_dir = str(tmp_path / "tfds")
  tb.load_with_tfds("cuhk_pedes", data_dir=data_dir, manual_dir=root)
  ann = read_annotations("cuhk_pedes", root)
  common = dict(name="cuhk_pedes", root=root, image_size=(32, 16), num_parallel_calls=2, color_jitter=True)
  folder_cfg = fx.data_config(**common)
  tfds_cfg = fx.data_config(**common, use_tfds=True, tfds_data_dir=data_dir)
  splits = {s: ann.split(s) for s in ("val", "test")}
  want_train = _take(train_iterator(ann.train, folder_cfg, 4, seed=3), 2)
  want_eval = {s: [list(b) for b in eval_datasets(sp, folder_cfg, 2)] for s, sp in splits.items()}
  os.rename(os.path.join(root, "imgs"), os.path.join(root, "imgs_moved"))

  pipeline = TrainPipeline(ann.train, tfds_cfg, 4, seed=3)
  assert (pipeline.steps_per_epoch, pipeline.num_examples, pipeline.num_skipped) == (2, 9, 0)
  _assert_same_batches(want_train, _take(pipeline.iterator(), 2))
  for s, sp in splits.items():
    got = [list(b) for b in eval_datasets(sp, tfds_cfg, 2)]
    for want_kind, got_kind in zip(want_eval[s], got):
      _assert_same_batches(want_kind, got_kind)
  assert np.abs(want_train[0]["images"]).max() > 0.5  # real pixels, not zeros


def test_use_tfds_names_unprepared_records_and_absent_images(tmp_path, caplog):
  root = fx.write_cuhk(str(tmp_path))
  ann = read_annotations("cuhk_pedes", root)
  data_dir = str(tmp_path / "tfds")
  cfg = fx.data_config(name="cuhk_pedes", root=root, image_size=(8, 4), use_tfds=True, tfds_data_dir=data_dir)
  with pytest.raises(FileNotFoundError, match="not prepared.*python -m tpsearch_jax.data.tfds_builders"):
    TrainPipeline(ann.train, cfg, 4, seed=0)
  tb.load_with_tfds("cuhk_pedes", data_dir=data_dir, manual_dir=root)
  val_image = ann.split("val").image_paths[0]  # exists on disk, but is not in the train records
  records = list(ann.train) + [ann.train[0]._replace(image_path=val_image)]
  with pytest.raises(ImageDecodeError, match=r"0100_c1s1_000151_00\.jpg: not in TFDS cuhk_pedes/train"):
    TrainPipeline(records, cfg, 4, seed=0)
  cfg.skip_corrupt = True
  pipeline = TrainPipeline(records, cfg, 4, seed=0)
  assert (pipeline.num_examples, pipeline.num_skipped) == (9, 1) and "skipping 1 examples" in caplog.text
