"""Benchmark annotation readers on tiny fixture folders; expected values are counted by hand from the fixture tables."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from PIL import Image

import dataset_fixtures as fx
from tpsearch_jax.data import AnnotationError, TrainRecord, find_missing_images, read_annotations


def _rel(ann, paths):
  return [os.path.relpath(p, ann.imgs_dir) for p in paths]


def test_cuhk_train_records_follow_reference_order_and_pid_rule(tmp_path):
  root = fx.write_cuhk(str(tmp_path))
  ann = read_annotations("cuhk_pedes", root)
  imgs = os.path.join(root, "imgs")
  expected = [
      (0, 0, "CUHK01/0001001.png", "c0 a"), (0, 0, "CUHK01/0001001.png", "c0 b"),
      (1, 1, "cam_a/000_45.jpg", "c1 a"), (1, 1, "cam_a/000_45.jpg", "c1 b"), (1, 1, "cam_a/000_45.jpg", "c1 c"),
      (2, 2, "train_query/p11600_s14885.jpg", "c3 a"), (2, 2, "train_query/p11600_s14885.jpg", "c3 b"),
      (0, 3, "CUHK03/0001_02.png", "c5 a"), (0, 3, "CUHK03/0001_02.png", "c5 b"),
  ]
  assert ann.train == [TrainRecord(p, i, os.path.join(imgs, f), c) for p, i, f, c in expected]
  assert all(os.path.isabs(r.image_path) for r in ann.train)
  assert ann.num_classes == 3


def test_cuhk_eval_splits_use_raw_ids(tmp_path):
  ann = read_annotations("cuhk_pedes", fx.write_cuhk(str(tmp_path)))
  val = ann.split("val")
  assert val.image_pids.tolist() == [4, 7]
  assert _rel(ann, val.image_paths) == ["Market/0100_c1s1_000151_00.jpg", "Market/0101_c2s1_000301_00.jpg"]
  assert val.captions == ["c2 a", "c2 b", "c7 a", "c7 b"]
  assert val.caption_pids.tolist() == [4, 4, 7, 7]
  test = ann.split("test")
  assert test.image_pids.tolist() == [5, 5, 6]
  assert test.captions == ["c4 a", "c4 b", "c6 a", "c8 a", "c8 b"]
  assert test.caption_pids.tolist() == [5, 5, 5, 6, 6]
  assert test.caption_image_index.tolist() == [0, 0, 1, 2, 2]


def test_icfg_split_field_not_folder_decides_and_val_is_refused(tmp_path):
  ann = read_annotations("icfg_pedes", fx.write_icfg(str(tmp_path)))
  assert [(r.pid, r.image_id, r.caption) for r in ann.train] == [(0, 0, "i0"), (1, 1, "i1"), (2, 2, "i2"), (0, 3, "i4")]
  assert ann.num_classes == 3
  assert ann.split("test").image_pids.tolist() == [3102, 3103]
  with pytest.raises(ValueError, match="ICFG-PEDES has no val split"):
    ann.split("val")


def test_rstp_reads_img_path_from_flat_folder(tmp_path):
  root = fx.write_rstp(str(tmp_path))
  ann = read_annotations("rstp_reid", root)
  assert [(r.pid, r.image_id, r.caption) for r in ann.train] == [
      (0, 0, "r0 a"), (0, 0, "r0 b"), (1, 1, "r1 a"), (1, 1, "r1 b"), (0, 2, "r3 a"), (0, 2, "r3 b")]
  assert ann.train[0].image_path == os.path.join(root, "imgs", "0000_c14_0031.jpg")
  assert ann.split("val").image_pids.tolist() == [3701]
  assert ann.split("test").caption_pids.tolist() == [3901] * 4
  assert ann.num_classes == 2


@pytest.mark.parametrize("name,writer,alt", [
    ("cuhk_pedes", fx.write_cuhk, "caption_all.json"), ("cuhk_pedes", fx.write_cuhk, "CUHK-PEDES.json"),
    ("icfg_pedes", fx.write_icfg, "ICFG_PEDES.json"), ("icfg_pedes", fx.write_icfg, "ICFG-PDES.json")])
def test_alternative_annotation_names_are_accepted_and_logged(tmp_path, caplog, name, writer, alt):
  root = writer(str(tmp_path), annotation_name=alt)
  with caplog.at_level(logging.INFO, logger="tpsearch_jax.data.annotations"):
    ann = read_annotations(name, root)
  assert ann.annotation_file == os.path.join(root, alt)
  assert os.path.join(root, alt) in caplog.text


def test_unknown_names_are_refused(tmp_path):
  ann = read_annotations("rstp_reid", fx.write_rstp(str(tmp_path)))
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    ann.split("dev")
  with pytest.raises(ValueError, match="unknown split 'train'"):
    ann.split("train")  # train is a list of captions, not an evaluation set
  with pytest.raises(ValueError, match="unknown dataset 'cuhk'"):
    read_annotations("cuhk", str(tmp_path))


def test_missing_dataset_folder(tmp_path):
  with pytest.raises(AnnotationError, match=r"CUHK-PEDES dataset folder .*nowhere does not exist"):
    read_annotations("cuhk_pedes", str(tmp_path / "nowhere"))


def test_missing_synthetic_folder_says_how_to_generate(tmp_path):
  with pytest.raises(AnnotationError, match=r"python -m tpsearch_jax\.data\.synthetic --out=.*synth"):
    read_annotations("synthetic_pedes", str(tmp_path / "synth"))


def test_missing_imgs_folder(tmp_path):
  root = fx.write_rstp(str(tmp_path), "missing_imgs_dir")
  with pytest.raises(AnnotationError, match=f"no imgs/ folder in {root}"):
    read_annotations("rstp_reid", root)


@pytest.mark.parametrize("name,writer,names", [
    ("cuhk_pedes", fx.write_cuhk, ["reid_raw.json", "caption_all.json", "CUHK-PEDES.json"]),
    ("icfg_pedes", fx.write_icfg, ["ICFG-PEDES.json", "ICFG_PEDES.json", "ICFG-PDES.json"]),
    ("rstp_reid", fx.write_rstp, ["data_captions.json"])])
def test_missing_annotation_lists_names_tried(tmp_path, name, writer, names):
  root = writer(str(tmp_path), "missing_annotation")
  with pytest.raises(AnnotationError) as e:
    read_annotations(name, root)
  assert root in str(e.value)
  for n in names:
    assert n in str(e.value)


def test_record_missing_field(tmp_path):
  with pytest.raises(AnnotationError, match=r"reid_raw\.json: record 3 has no field 'id'"):
    read_annotations("cuhk_pedes", fx.write_cuhk(str(tmp_path), "missing_field"))


def test_rstp_record_with_wrong_path_key_gets_a_hint(tmp_path):
  root = fx.write_rstp(str(tmp_path))
  path = os.path.join(root, "data_captions.json")
  recs = json.load(open(path))
  recs[1]["file_path"] = recs[1].pop("img_path")
  json.dump(recs, open(path, "w"))
  with pytest.raises(AnnotationError, match=r"record 1 has no field 'img_path' \(RSTPReid stores .*'file_path'"):
    read_annotations("rstp_reid", root)


def test_record_without_captions(tmp_path):
  with pytest.raises(AnnotationError, match=r"ICFG-PEDES\.json: record 2 \(file_path='test/0002/.*no captions"):
    read_annotations("icfg_pedes", fx.write_icfg(str(tmp_path), "no_captions"))


def test_record_with_empty_caption(tmp_path):
  with pytest.raises(AnnotationError, match=r"record 1 \(file_path='cam_a/000_45\.jpg'\) field 'captions'\[1\] is emp"):
    read_annotations("cuhk_pedes", fx.write_cuhk(str(tmp_path), "empty_caption"))


@pytest.mark.parametrize("name,writer,first", [
    ("cuhk_pedes", fx.write_cuhk, "2 ids absent, first: 3, 4"),
    ("icfg_pedes", fx.write_icfg, "1 ids absent, first: 1"),
    ("rstp_reid", fx.write_rstp, "2 ids absent, first: 1, 2")])
def test_noncontiguous_train_ids_list_the_gaps(tmp_path, name, writer, first):
  with pytest.raises(AnnotationError, match="train ids are not contiguous") as e:
    read_annotations(name, writer(str(tmp_path), "noncontiguous"))
  assert first in str(e.value)


def test_cuhk_zero_id_is_not_one_based(tmp_path):
  root = fx.write_cuhk(str(tmp_path))
  path = os.path.join(root, "reid_raw.json")
  recs = json.load(open(path))
  recs[3]["id"] = 0
  json.dump(recs, open(path, "w"))
  with pytest.raises(AnnotationError, match="record 3 has train id 0, giving a negative pid with pid = id − 1"):
    read_annotations("cuhk_pedes", root)


def test_bad_split_value(tmp_path):
  with pytest.raises(AnnotationError, match=r"record 4 .* field 'split' must be a string"):
    read_annotations("rstp_reid", fx.write_rstp(str(tmp_path), "bad_split"))


def test_unusual_split_value_goes_to_val_with_a_warning(tmp_path, caplog):
  root = fx.write_cuhk(str(tmp_path))
  path = os.path.join(root, "reid_raw.json")
  recs = json.load(open(path))
  recs[2]["split"] = "validation"
  json.dump(recs, open(path, "w"))
  with caplog.at_level(logging.WARNING, logger="tpsearch_jax.data.annotations"):
    ann = read_annotations("cuhk_pedes", root)
  assert ann.split("val").image_pids.tolist() == [4, 7]
  assert "'validation': 1" in caplog.text


def test_missing_images_are_reported_per_folder(tmp_path):
  with pytest.raises(AnnotationError) as e:
    read_annotations("cuhk_pedes", fx.write_cuhk(str(tmp_path), "missing_image"))
  msg = str(e.value)
  assert "3 of 9 image files listed in" in msg and "reid_raw.json" in msg
  assert "Market/: 2, train_query/: 1" in msg
  assert "first: Market/0100_c1s1_000151_00.jpg, train_query/p11600_s14885.jpg, Market/0101_c2s1_000301_00.jpg" in msg


def test_skip_missing_drops_counts_and_logs(tmp_path, caplog):
  root = fx.write_cuhk(str(tmp_path), "missing_image")
  with caplog.at_level(logging.WARNING, logger="tpsearch_jax.data.annotations"):
    ann = read_annotations("cuhk_pedes", root, skip_missing=True)
  assert ann.skipped_missing == 3
  assert [(r.pid, r.image_id) for r in ann.train] == [(0, 0), (0, 0), (1, 1), (1, 1), (1, 1), (0, 2), (0, 2)]
  assert ann.num_classes == 3  # pid 2 lost its only image; pids are not renumbered
  assert "dropped 3 records (train: 1, val: 2, test: 0)" in caplog.text
  assert "1 train identities have no image left" in caplog.text
  with pytest.raises(ValueError, match="has no val records"):
    ann.split("val")


def test_existence_check_is_callable_later(tmp_path):
  root = fx.write_icfg(str(tmp_path))
  ann = read_annotations("icfg_pedes", root)
  assert ann.check_images().missing == []
  os.remove(os.path.join(root, "imgs", fx.ICFG_RECORDS[2]["file_path"]))
  report = ann.check_images()
  assert report.checked == 6 and report.missing == [fx.ICFG_RECORDS[2]["file_path"]]
  assert report.per_folder() == {"test": 1}
  assert find_missing_images(["a.jpg", "a.jpg", "b/c.jpg"], str(tmp_path)).checked == 2
  read_annotations("icfg_pedes", root, check_images=False)  # opt-out reads without touching files


def test_invalid_json_names_the_file(tmp_path):
  root = fx.write_rstp(str(tmp_path))
  with open(os.path.join(root, "data_captions.json"), "w") as f:
    f.write('{"not": "a list"}')
  with pytest.raises(AnnotationError, match=r"data_captions\.json must hold a JSON list"):
    read_annotations("rstp_reid", root)


def test_package_import_does_not_load_tensorflow():
  code = "import sys, tpsearch_jax.data; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)



def test_corrupt_files_pass_the_existence_check(tmp_path):
  # decoding is the input pipeline's job; the reader only checks that files exist
  root = fx.write_cuhk(str(tmp_path), "corrupt_image")
  ann = read_annotations("cuhk_pedes", root)
  path = os.path.join(root, "imgs", fx.corrupt_path("cuhk"))
  assert path in {r.image_path for r in ann.train}
  with pytest.raises(OSError):
    Image.open(path).load()
