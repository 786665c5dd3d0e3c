"""Searching a benchmark split: index exactly its images, score its own captions as ``--mode=eval`` does.

``read_split(root, split)`` reads the dataset folder with the benchmark readers (``data.annotations``; the format is
named or recognised from its annotation file) and gives the split's gallery (each image once) and queries (each
caption). An index built from a split records {"name", "root", "split"} under "dataset" in index.json, so
``query --queries=split`` can read the same captions back and rank the index's vectors with the same metric code as
evaluation (``metrics.retrieval_metrics_from_embeddings``). No TensorFlow.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tpsearch_jax import metrics, user_errors
from tpsearch_jax.data import annotations as ann_lib

EVAL_SPLITS = ("val", "test")


def detect_dataset(root: str) -> str:
  """The benchmark format of a dataset folder from its annotation file name; synthetic_pedes by its attributes.json
  beside reid_raw.json. UserError naming the folder when none fits."""
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise user_errors.UserError(f"--dataset_root={root}: not a folder")
  have = set(os.listdir(root))
  if {"reid_raw.json", "attributes.json"} <= have:
    return "synthetic_pedes"
  for name, spec in ann_lib.DATASETS.items():
    if name != "synthetic_pedes" and have & set(spec.annotation_files):
      return name
  files = sorted({f for spec in ann_lib.DATASETS.values() for f in spec.annotation_files})
  raise user_errors.UserError(f"--dataset_root={root} holds none of the annotation files the readers know "
                              f"({', '.join(files)}): pass the dataset folder (imgs/ + annotation) or --dataset=NAME")


def read_split(root: str, split: str, name: str | None = None) -> tuple[str, ann_lib.EvalSplit]:
  """A dataset folder + "val" | "test" → (format name, the split: gallery image paths [G] + pids, captions [Q])."""
  if split not in EVAL_SPLITS:
    raise user_errors.UserError(f"--split must be one of {', '.join(EVAL_SPLITS)} (a gallery and its captions), "
                                f"got {split!r}")
  name = name or detect_dataset(root)
  ann = ann_lib.read_annotations(name, root)
  try:
    return name, ann.split(split)
  except ValueError as e:
    raise user_errors.UserError(str(e)) from e


def dataset_record(name: str, root: str, split: str) -> dict:
  """The "dataset" entry of index.json."""
  return {"name": name, "root": os.path.abspath(root), "split": split}


def split_of_index(meta: dict) -> ann_lib.EvalSplit:
  """The split an index was built from (index.json "dataset"), read again; UserError if it was built from a folder."""
  d = meta.get("dataset")
  if not d:
    raise user_errors.UserError("--queries=split needs an index built from a dataset split (index "
                                "--dataset_root=DIR --split=test); this one was built from --images="
                                f"{meta.get('images_root')}")
  return read_split(d["root"], d["split"], d["name"])[1]


def split_metrics(split: ann_lib.EvalSplit, paths: list[str], gallery: np.ndarray,
                  queries: list[np.ndarray]) -> dict:
  """The split's captions' vectors (per caption [S, D]: one vector, or one per sentence scored by their max) against
  the index's vectors gallery [G, D] (rows = ``paths``) → {"R1", "R5", "R10", "mAP", "mINP"} in percent, as
  evaluation reports them. UserError if the index's images are not exactly the split's (e.g. built with --skip_bad,
  or the dataset changed)."""
  row = {p: i for i, p in enumerate(paths)}
  missing = [p for p in split.image_paths if p not in row]
  if missing or len(paths) != len(split.image_paths):
    raise user_errors.UserError(f"the index holds {len(paths)} images, the {split.name} split {len(split.image_paths)}"
                                f" ({len(missing)} of the split's not indexed, first: {missing[:3]}): the metrics "
                                "would not be the split's; rebuild the index without --skip_bad")
  g = np.asarray(gallery, np.float32)[np.asarray([row[p] for p in split.image_paths])]
  if all(len(q) == 1 for q in queries):
    out = metrics.retrieval_metrics_from_embeddings(np.concatenate(queries).astype(np.float32), g,
                                                    split.caption_pids, split.image_pids)
  else:
    sim = np.stack([np.max(np.asarray(q, np.float32) @ g.T, axis=0) for q in queries])
    out = metrics.retrieval_metrics(sim, split.caption_pids, split.image_pids)
  return {k: float(out[k]) for k in ("R1", "R5", "R10", "mAP", "mINP") if k in out}


def write_json(path: str, value) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, ensure_ascii=False)
