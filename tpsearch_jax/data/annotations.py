"""Benchmark annotation readers: CUHK-PEDES, ICFG-PEDES, RSTPReid and the procedural synthetic_pedes.

Each dataset folder holds ``imgs/`` and one JSON list with one record per image (path relative to ``imgs/``, a list
of captions, an integer ``id`` and a ``split``). Records are routed as the IRRA-family loaders do: ``"train"`` →
train, ``"test"`` → test, any other value → val. Train pids are ``id − 1`` for the 1-based CUHK-format files and
``id`` otherwise, and must form 0..K−1; val/test pids are the raw ids. The train list has one entry per caption with a
running image counter; an evaluation split has every image once (gallery) and every caption of those images (queries).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from tpsearch_jax.user_errors import UserError

log = logging.getLogger(__name__)

_MAX_LISTED = 10  # offenders / gaps printed in an error message


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How one benchmark stores its annotation."""

  name: str
  display_name: str
  annotation_files: tuple[str, ...]  # accepted file names, preferred first
  path_key: str
  id_offset: int  # train pid = id − id_offset
  has_val: bool


DATASETS: dict[str, DatasetSpec] = {
    "cuhk_pedes": DatasetSpec("cuhk_pedes", "CUHK-PEDES", ("reid_raw.json", "caption_all.json", "CUHK-PEDES.json"),
                              "file_path", 1, True),
    "icfg_pedes": DatasetSpec("icfg_pedes", "ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json", "ICFG-PDES.json"),
                              "file_path", 0, False),
    "rstp_reid": DatasetSpec("rstp_reid", "RSTPReid", ("data_captions.json",), "img_path", 0, True),
    "synthetic_pedes": DatasetSpec("synthetic_pedes", "synthetic_pedes", ("reid_raw.json",), "file_path", 1, True),
}
DATASET_NAMES = tuple(DATASETS)
SPLITS = ("train", "val", "test")
GENERATOR_CLI = "python -m tpsearch_jax.data.synthetic --out={root}"


class AnnotationError(UserError):
  """A dataset folder or annotation file that cannot be read as its benchmark's format."""


class TrainRecord(NamedTuple):
  """One training sample: a caption with its image (a CUHK image with 3 captions gives 3 records)."""

  pid: int  # 0..num_classes−1
  image_id: int  # running counter over train images
  image_path: str  # absolute
  caption: str


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One annotation record (one image) after validation."""

  index: int  # position in the annotation file
  split: str  # "train" | "val" | "test" after routing
  raw_id: int  # ``id`` as stored
  pid: int  # train: raw_id − offset; val/test: raw_id
  file_path: str  # relative to imgs/, as stored
  image_path: str  # absolute
  captions: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """Gallery (each image once) and queries (each caption of those images), in annotation order."""

  name: str
  image_pids: np.ndarray  # int64 [G]
  image_paths: list[str]  # [G] absolute
  caption_pids: np.ndarray  # int64 [Q]
  captions: list[str]  # [Q]
  caption_image_index: np.ndarray  # int64 [Q]: gallery index of the caption's own image
  skipped: dict = dataclasses.field(default_factory=dict)  # what reading dropped: {"missing", "corrupt", …: n}


@dataclasses.dataclass(frozen=True)
class MissingImages:
  """Result of the existence check over every distinct image path."""

  imgs_dir: str
  checked: int
  missing: list[str]  # relative to imgs_dir, annotation order

  def per_folder(self) -> dict[str, int]:
    """Missing count per top-level folder under imgs/ ("." for files directly in imgs/)."""
    counts = collections.Counter(p.split("/", 1)[0] if "/" in p else "." for p in self.missing)
    return dict(sorted(counts.items()))

  def message(self, annotation_file: str) -> str:
    folders = ", ".join(f"{k}/: {v}" for k, v in self.per_folder().items())
    first = ", ".join(self.missing[:_MAX_LISTED])
    return (f"{len(self.missing)} of {self.checked} image files listed in {annotation_file} do not exist under "
            f"{self.imgs_dir} (missing per top-level folder: {folders}; first: {first}). Paths in the annotation are "
            "relative to imgs/; a partial download often lacks whole sub-folders. Set --config.data.skip_missing=True "
            "(read_annotations(skip_missing=True)) to drop them with their captions.")


def find_missing_images(file_paths: Sequence[str], imgs_dir: str) -> MissingImages:
  """Checks once that every distinct ``imgs_dir/file_path`` exists. file_paths: [N] relative paths."""
  seen: set[str] = set()
  missing = []
  for rel in file_paths:
    if rel in seen:
      continue
    seen.add(rel)
    if not os.path.isfile(os.path.join(imgs_dir, rel)):
      missing.append(rel)
  return MissingImages(imgs_dir=imgs_dir, checked=len(seen), missing=missing)


def annotation_path(name: str, root: str) -> str:
  """Path of the annotation JSON in a dataset folder (first accepted name that exists); clear errors otherwise."""
  spec = _spec(name)
  root = os.path.abspath(os.fspath(root))
  if not os.path.isdir(root):
    hint = ""
    if name == "synthetic_pedes":
      hint = f" Generate it with: {GENERATOR_CLI.format(root=root)}"
    raise AnnotationError(f"{spec.display_name} dataset folder {root} does not exist.{hint}")
  imgs = os.path.join(root, "imgs")
  if not os.path.isdir(imgs):
    raise AnnotationError(f"{spec.display_name}: no imgs/ folder in {root}; the dataset folder must hold imgs/ and "
                          f"the annotation file {spec.annotation_files[0]} side by side.")
  present = [f for f in spec.annotation_files if os.path.isfile(os.path.join(root, f))]
  if not present:
    raise AnnotationError(f"{spec.display_name}: no annotation file in {root}; tried "
                          f"{', '.join(spec.annotation_files)}.")
  if len(present) > 1:
    log.warning("%s: several annotation files in %s (%s); using %s", spec.display_name, root, ", ".join(present),
                present[0])
  return os.path.join(root, present[0])


def no_skips() -> dict[str, dict[str, int]]:
  """{split: {"missing": 0, "corrupt": 0, "captions_dropped": 0}} for every split."""
  return {s: {"missing": 0, "corrupt": 0, "captions_dropped": 0} for s in SPLITS}


class TrainRecords(list):
  """The train records (list[TrainRecord]) with ``skipped``: the images reading dropped and their captions."""

  def __init__(self, records, skipped: dict[str, int] | None = None):
    super().__init__(records)
    self.skipped = dict(skipped or no_skips()["train"])


class Annotations:
  """A benchmark's annotation, validated. ``train``: list[TrainRecord]; ``split(name)``: EvalSplit.

  ``skipped``: {split: {"missing": images, "corrupt": images, "captions_dropped": captions}} dropped while reading
  (skip_missing) and by the start-up decode check (``datasets.load_annotations``, skip_corrupt).
  """

  def __init__(self, spec: DatasetSpec, root: str, annotation_file: str, images: list[ImageRecord], num_classes: int,
               skipped_missing: int = 0, skipped: dict[str, dict[str, int]] | None = None):
    self.spec = spec
    self.name = spec.name
    self.root = root
    self.imgs_dir = os.path.join(root, "imgs")
    self.annotation_file = annotation_file
    self.num_classes = num_classes
    self.skipped_missing = skipped_missing
    self.skipped = no_skips() | {s: dict(v) for s, v in (skipped or {}).items()}
    self._images = {s: [r for r in images if r.split == s] for s in SPLITS}
    self.train = TrainRecords([TrainRecord(r.pid, image_id, r.image_path, c)
                               for image_id, r in enumerate(self._images["train"]) for c in r.captions],
                              self.skipped["train"])

  def without(self, dropped: dict[str, str]) -> Annotations:
    """A copy without the images ``dropped`` {absolute image path: "missing" | "corrupt"} (and their captions),
    counted in ``skipped``; train image ids are renumbered, pids kept."""
    skipped = {s: dict(v) for s, v in self.skipped.items()}
    kept = []
    for r in (r for s in SPLITS for r in self._images[s]):
      if r.image_path in dropped:
        skipped[r.split][dropped[r.image_path]] += 1
        skipped[r.split]["captions_dropped"] += len(r.captions)
      else:
        kept.append(r)
    return Annotations(self.spec, self.root, self.annotation_file, sorted(kept, key=lambda r: r.index),
                       self.num_classes, self.skipped_missing, skipped)

  def images(self, split: str) -> list[ImageRecord]:
    """Image records of "train", "val" or "test" in annotation order (empty if the file has none)."""
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r} for {self.spec.display_name}; expected one of {', '.join(SPLITS)}")
    return list(self._images[split])

  def split(self, split: str) -> EvalSplit:
    """Evaluation set of "val" or "test": gallery = images once each, queries = all their captions."""
    self._check_split(split)
    recs = self._images[split]
    caption_index = [i for i, r in enumerate(recs) for _ in r.captions]
    return EvalSplit(
        name=split,
        image_pids=np.asarray([r.pid for r in recs], np.int64),
        image_paths=[r.image_path for r in recs],
        caption_pids=np.asarray([recs[i].pid for i in caption_index], np.int64),
        captions=[c for r in recs for c in r.captions],
        caption_image_index=np.asarray(caption_index, np.int64),
        skipped=dict(self.skipped[split]),
    )

  def _check_split(self, split: str) -> None:
    if split not in ("val", "test"):
      raise ValueError(f"unknown split {split!r} for {self.spec.display_name}; expected one of val, test")
    if not self._images[split]:
      if split == "val" and not self.spec.has_val:
        raise ValueError(f"{self.spec.display_name} has no val split (its annotation has only train and test "
                         "records); evaluate on 'test'.")
      raise ValueError(f"{self.spec.display_name}: {self.annotation_file} has no {split} records.")

  def check_images(self) -> MissingImages:
    """Existence check of every image of every split (for a trainer that wants to re-check before a long run)."""
    recs = [r for s in SPLITS for r in self._images[s]]
    return find_missing_images([r.file_path for r in recs], self.imgs_dir)

  def __repr__(self) -> str:
    sizes = ", ".join(f"{s}={len(v)}" for s, v in self._images.items())
    return f"Annotations({self.name}, images: {sizes}, train captions={len(self.train)}, classes={self.num_classes})"


def read_annotations(name: str, root: str, *, check_images: bool = True, skip_missing: bool = False) -> Annotations:
  """Reads and validates ``root/<annotation json>`` of dataset ``name``; image paths become absolute under imgs/.

  check_images: verify every image file exists (raise, or drop with ``skip_missing=True``: counted and logged).
  """
  spec = _spec(name)
  root = os.path.abspath(os.fspath(root))
  path = annotation_path(name, root)
  log.info("%s: reading annotation %s", spec.display_name, path)
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise AnnotationError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(raw, list):
    raise AnnotationError(f"{path} must hold a JSON list of records (one per image), got {type(raw).__name__}")
  imgs_dir = os.path.join(root, "imgs")
  images = [_parse_record(spec, path, i, rec, imgs_dir) for i, rec in enumerate(raw)]
  _log_unusual_splits(spec, path, raw)
  num_classes = _check_train_ids(spec, path, images)

  skipped, counts = 0, no_skips()
  if check_images:
    report = find_missing_images([r.file_path for r in images], imgs_dir)
    if report.missing:
      if not skip_missing:
        raise AnnotationError(report.message(path))
      gone = set(report.missing)
      before = collections.Counter(r.split for r in images)
      for r in (r for r in images if r.file_path in gone):
        counts[r.split]["missing"] += 1
        counts[r.split]["captions_dropped"] += len(r.captions)
      images = [r for r in images if r.file_path not in gone]
      after = collections.Counter(r.split for r in images)
      skipped = sum(before.values()) - sum(after.values())
      log.warning("%s; skip_missing=True: dropped %d records (%s) and their %d captions", report.message(path),
                  skipped, ", ".join(f"{s}: {before[s] - after[s]}" for s in SPLITS),
                  sum(c["captions_dropped"] for c in counts.values()))
      left = {r.pid for r in images if r.split == "train"}
      if len(left) < num_classes:
        log.warning("%s: %d train identities have no image left; num_classes stays %d (pids are not renumbered)",
                    spec.display_name, num_classes - len(left), num_classes)
  ann = Annotations(spec, root, path, images, num_classes, skipped, counts)
  log.info("%r", ann)
  return ann


def _spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
  return DATASETS[name]


def _route(split: str) -> str:
  return split if split in ("train", "test") else "val"


def _parse_record(spec: DatasetSpec, path: str, index: int, rec: Any, imgs_dir: str) -> ImageRecord:
  where = f"{path}: record {index}"
  if not isinstance(rec, dict):
    raise AnnotationError(f"{where} must be a JSON object, got {type(rec).__name__}")
  for key in (spec.path_key, "captions", "id", "split"):
    if key not in rec:
      hint = ""
      if key == spec.path_key:
        other = {"file_path": "img_path", "img_path": "file_path"}[key]
        if other in rec:
          hint = f" ({spec.display_name} stores the image path under {key!r}, this record has {other!r})"
      raise AnnotationError(f"{where} has no field {key!r}{hint}; fields present: {', '.join(sorted(rec))}")
  rel = rec[spec.path_key]
  if not isinstance(rel, str) or not rel.strip():
    raise AnnotationError(f"{where} field {spec.path_key!r} must be a non-empty path string, got {rel!r}")
  if os.path.isabs(rel):
    raise AnnotationError(f"{where} field {spec.path_key!r} = {rel!r} must be relative to imgs/")
  where = f"{where} ({spec.path_key}={rel!r})"
  caps = rec["captions"]
  if not isinstance(caps, list):
    raise AnnotationError(f"{where} field 'captions' must be a list of strings, got {type(caps).__name__}")
  if not caps:
    raise AnnotationError(f"{where} has no captions (field 'captions' is an empty list)")
  for j, c in enumerate(caps):
    if not isinstance(c, str) or not c.strip():
      raise AnnotationError(f"{where} field 'captions'[{j}] is empty or not a string: {c!r}")
  raw_id = rec["id"]
  if isinstance(raw_id, bool) or not isinstance(raw_id, int):
    raise AnnotationError(f"{where} field 'id' must be an integer, got {raw_id!r}")
  split = rec["split"]
  if not isinstance(split, str):
    raise AnnotationError(f"{where} field 'split' must be a string (train/val/test), got {split!r}")
  routed = _route(split)
  pid = raw_id - spec.id_offset if routed == "train" else raw_id
  return ImageRecord(index=index, split=routed, raw_id=raw_id, pid=pid, file_path=rel,
                     image_path=os.path.join(imgs_dir, rel), captions=tuple(caps))


def _log_unusual_splits(spec: DatasetSpec, path: str, raw: list[dict]) -> None:
  odd = collections.Counter(r["split"] for r in raw if r["split"] not in SPLITS)
  if odd:
    log.warning("%s: %s has split values other than train/val/test, routed to val as the reference loaders do: %s",
                spec.display_name, path, ", ".join(f"{k!r}: {v}" for k, v in sorted(odd.items())))


def _check_train_ids(spec: DatasetSpec, path: str, images: list[ImageRecord]) -> int:
  """Train pids must be exactly 0..K−1; returns K."""
  pids = sorted({r.pid for r in images if r.split == "train"})
  if not pids:
    raise AnnotationError(f"{path} has no train records")
  rule = f"pid = id − {spec.id_offset}" if spec.id_offset else "pid = id"
  if pids[0] < 0:
    bad = next(r for r in images if r.split == "train" and r.pid < 0)
    raise AnnotationError(f"{path}: record {bad.index} has train id {bad.raw_id}, giving a negative pid with "
                          f"{rule} ({spec.display_name} train ids start at {spec.id_offset})")
  if pids[-1] != len(pids) - 1:
    present = np.zeros(pids[-1] + 1, bool)
    present[pids] = True
    gaps = np.flatnonzero(~present)
    shown = ", ".join(str(g + spec.id_offset) for g in gaps[:_MAX_LISTED])
    raise AnnotationError(
        f"{path}: train ids are not contiguous ({rule} must cover 0..K−1): {len(pids)} distinct train ids but the "
        f"largest pid is {pids[-1]}; {len(gaps)} ids absent, first: {shown}")
  return len(pids)
