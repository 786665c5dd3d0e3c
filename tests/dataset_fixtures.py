"""Tiny dataset folders in each benchmark's exact on-disk format, with broken variants for error-path tests.

Each ``write_*`` returns the dataset folder (holding ``imgs/`` and the annotation JSON). Every image is a small
generated picture whose colour encodes its record index, saved in the format its extension names.
"""

from __future__ import annotations

import copy
import json
import os

import ml_collections
import numpy as np
from PIL import Image

from tpsearch_jax.configs import base

VARIANTS = ("missing_annotation", "missing_imgs_dir", "missing_image", "no_captions", "empty_caption", "missing_field",
            "noncontiguous", "bad_split", "corrupt_image")
DEFAULT_SIZE = (8, 4)  # (H, W) of the fixture images

# CUHK-PEDES: 1-based ids, several source sub-folders, splits interleaved, one image with 3 captions.
CUHK_RECORDS = [
    {"file_path": "CUHK01/0001001.png", "id": 1, "split": "train", "captions": ["c0 a", "c0 b"]},
    {"file_path": "cam_a/000_45.jpg", "id": 2, "split": "train", "captions": ["c1 a", "c1 b", "c1 c"]},
    {"file_path": "Market/0100_c1s1_000151_00.jpg", "id": 4, "split": "val", "captions": ["c2 a", "c2 b"]},
    {"file_path": "train_query/p11600_s14885.jpg", "id": 3, "split": "train", "captions": ["c3 a", "c3 b"]},
    {"file_path": "test_query/p1_s1.jpg", "id": 5, "split": "test", "captions": ["c4 a", "c4 b"]},
    {"file_path": "CUHK03/0001_02.png", "id": 1, "split": "train", "captions": ["c5 a", "c5 b"]},
    {"file_path": "test_query/p1_s2.jpg", "id": 5, "split": "test", "captions": ["c6 a"]},
    {"file_path": "Market/0101_c2s1_000301_00.jpg", "id": 7, "split": "val", "captions": ["c7 a", "c7 b"]},
    {"file_path": "CUHK01/0010002.png", "id": 6, "split": "test", "captions": ["c8 a", "c8 b"]},
]

# ICFG-PEDES: imgs/train and imgs/test are storage folders, not the split (record 2 is a train image under test/).
ICFG_RECORDS = [
    {"file_path": "train/0000/0000_004_01_0303morning_0008_0.jpg", "id": 0, "split": "train", "captions": ["i0"]},
    {"file_path": "train/0001/0001_010_05_0303morning_0106_1.jpg", "id": 1, "split": "train", "captions": ["i1"]},
    {"file_path": "test/0002/0002_003_01_0303noon_0044_0.jpg", "id": 2, "split": "train", "captions": ["i2"]},
    {"file_path": "test/3102/3102_002_09_0113afternoon_0201_0.jpg", "id": 3102, "split": "test", "captions": ["i3"]},
    {"file_path": "train/0000/0000_004_01_0303morning_0010_1.jpg", "id": 0, "split": "train", "captions": ["i4"]},
    {"file_path": "test/3103/3103_007_01_0113noon_0019_0.jpg", "id": 3103, "split": "test", "captions": ["i5"]},
]

# RSTPReid: flat imgs/, path key img_path, 0-based train ids.
RSTP_RECORDS = [
    {"img_path": "0000_c14_0031.jpg", "id": 0, "split": "train", "captions": ["r0 a", "r0 b"]},
    {"img_path": "0001_c1_0002.jpg", "id": 1, "split": "train", "captions": ["r1 a", "r1 b"]},
    {"img_path": "3701_c5_0010.jpg", "id": 3701, "split": "val", "captions": ["r2 a", "r2 b"]},
    {"img_path": "0000_c3_0040.jpg", "id": 0, "split": "train", "captions": ["r3 a", "r3 b"]},
    {"img_path": "3901_c8_0017.jpg", "id": 3901, "split": "test", "captions": ["r4 a", "r4 b"]},
    {"img_path": "3901_c9_0018.jpg", "id": 3901, "split": "test", "captions": ["r5 a", "r5 b"]},
]

# Files removed by the "missing_image" variant (two top-level folders for CUHK, so per-folder counts show).
_MISSING = {
    "cuhk": ["Market/0100_c1s1_000151_00.jpg", "Market/0101_c2s1_000301_00.jpg", "train_query/p11600_s14885.jpg"],
    "icfg": ["test/3102/3102_002_09_0113afternoon_0201_0.jpg"],
    "rstp": ["0001_c1_0002.jpg"],
}


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The base config's data block (tpsearch_jax/configs/base.py, the one source of defaults) with ``overrides``.

  An override naming a field the block lacks raises, so a test cannot silently set a field nothing reads.
  """
  data = base.get_config().data.copy_and_resolve_references()
  unknown = sorted(set(overrides) - set(data.keys()))
  if unknown:
    raise KeyError(f"config.data has no field(s) {', '.join(unknown)}")
  data.update(overrides)
  return data


def image_array(index: int, size: tuple[int, int] = (8, 4)) -> np.ndarray:
  """The picture written for record ``index``: uint8 [H, W, 3], colour from the index plus a 2-row stripe."""
  h, w = size
  img = np.empty((h, w, 3), np.uint8)
  img[...] = ((37 * index + 20) % 256, (91 * index + 60) % 256, (53 * index + 140) % 256)
  img[: h // 4] = 255 - img[: h // 4]
  return img


def write_cuhk(root: str, variant: str | None = None, annotation_name: str = "reid_raw.json",
               folder: str = "CUHK-PEDES", size: tuple[int, int] = DEFAULT_SIZE) -> str:
  """CUHK-PEDES folder: imgs/<source sub-folders>/… + reid_raw.json (1-based ids, processed_tokens kept)."""
  records = copy.deepcopy(CUHK_RECORDS)
  for r in records:
    r["processed_tokens"] = [c.split() for c in r["captions"]]
  return _write(os.path.join(root, folder), records, "file_path", annotation_name, variant, "cuhk", size)


def write_icfg(root: str, variant: str | None = None, annotation_name: str = "ICFG-PEDES.json",
               folder: str = "ICFG-PEDES", size: tuple[int, int] = DEFAULT_SIZE) -> str:
  """ICFG-PEDES folder: imgs/train/…, imgs/test/… + ICFG-PEDES.json (train/test splits only)."""
  return _write(os.path.join(root, folder), copy.deepcopy(ICFG_RECORDS), "file_path", annotation_name, variant, "icfg",
                size)


def write_rstp(root: str, variant: str | None = None, folder: str = "RSTPReid",
               size: tuple[int, int] = DEFAULT_SIZE) -> str:
  """RSTPReid folder: flat imgs/*.jpg + data_captions.json keyed by img_path."""
  return _write(os.path.join(root, folder), copy.deepcopy(RSTP_RECORDS), "img_path", "data_captions.json", variant,
                "rstp", size)


def corrupt_path(kind: str) -> str:
  """Relative path (under imgs/) of the file the "corrupt_image" variant overwrites with non-image bytes."""
  return {"cuhk": CUHK_RECORDS, "icfg": ICFG_RECORDS, "rstp": RSTP_RECORDS}[kind][1].get(
      "img_path" if kind == "rstp" else "file_path")


def _write(folder: str, records: list[dict], path_key: str, annotation_name: str, variant: str | None,
           kind: str, size: tuple[int, int]) -> str:
  if variant is not None and variant not in VARIANTS:
    raise ValueError(f"unknown fixture variant {variant!r}")
  os.makedirs(folder)
  if variant != "missing_imgs_dir":
    for i, r in enumerate(records):
      path = os.path.join(folder, "imgs", r[path_key])
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(image_array(i, size)).save(path)
  if variant == "missing_image":
    for rel in _MISSING[kind]:
      os.remove(os.path.join(folder, "imgs", rel))
  elif variant == "corrupt_image":  # exists (passes the existence check) but does not decode
    with open(os.path.join(folder, "imgs", corrupt_path(kind)), "wb") as f:
      f.write(b"\xff\xd8 truncated, not an image")
  elif variant == "no_captions":
    records[2]["captions"] = []
  elif variant == "empty_caption":
    records[1]["captions"] = [records[1]["captions"][0], "   "]
  elif variant == "missing_field":
    del records[3]["id"]
  elif variant == "noncontiguous":
    # the train identity stored as 3 (CUHK) / 1 (ICFG, RSTP) becomes 5 / 3, leaving ids absent below the largest
    old, new = {"cuhk": (3, 5), "icfg": (1, 3), "rstp": (1, 3)}[kind]
    for r in records:
      if r["split"] == "train" and r["id"] == old:
        r["id"] = new
  elif variant == "bad_split":
    records[4]["split"] = None
  if variant != "missing_annotation":
    with open(os.path.join(folder, annotation_name), "w", encoding="utf-8") as f:
      json.dump(records, f)
  return folder
