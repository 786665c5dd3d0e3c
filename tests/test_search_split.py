"""Recognising a dataset folder's benchmark format for `index --dataset_root`, and refusing what is not one (no model)."""

from __future__ import annotations

import pytest

from tpsearch_jax import user_errors
from tpsearch_jax.search import split


@pytest.mark.parametrize("files,name", [
    (["reid_raw.json"], "cuhk_pedes"), (["caption_all.json"], "cuhk_pedes"), (["ICFG-PEDES.json"], "icfg_pedes"),
    (["data_captions.json"], "rstp_reid"), (["reid_raw.json", "attributes.json"], "synthetic_pedes")])
def test_format_is_recognised_from_the_annotation_file(tmp_path, files, name):
  (tmp_path / "imgs").mkdir()
  for f in files:
    (tmp_path / f).write_text("[]")
  assert split.detect_dataset(str(tmp_path)) == name


def test_a_folder_without_annotation_or_a_train_split_is_refused(tmp_path):
  (tmp_path / "imgs").mkdir()
  with pytest.raises(user_errors.UserError, match="holds none of the annotation files"):
    split.detect_dataset(str(tmp_path))
  with pytest.raises(user_errors.UserError, match="not a folder"):
    split.detect_dataset(str(tmp_path / "missing"))
  with pytest.raises(user_errors.UserError, match="--split must be one of val, test"):
    split.read_split(str(tmp_path), "train")
