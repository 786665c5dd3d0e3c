"""The index folder (format 3): its files, reading them back with their checksums checked, and writing them safely.

An index folder holds
  embeddings.npy   float16 [n, D]  retrieval vectors (L2-normalised; D = M pieces × E, see ``explain``)
  paths.json       n absolute image paths, sorted (row i of every array); JSON, so any file name round-trips
  stats.npy        int64 [n, 2]    (size, mtime_ns) of each file when encoded: re-indexing encodes only new/changed ones
  foreground.npy   float16 [n, N]  the part model's foreground map over the N = gh·gw patches (part models only)
  skipped.json     unreadable files of the last run (with --skip_bad): [[path, error]]
  ann.faiss        the approximate index over embeddings.npy (``--kind=faiss`` only; ``ann``)
  index.json       written last: images root, the run, its fingerprint (``fingerprint``), the sha256 of every file
                   above but skipped.json, the piece layout, the kind ("exact" | "faiss", with its "ann" record) and,
                   for a dataset split, "dataset"
``indexing.build`` writes it; ``read_index`` reads it, refusing a missing, damaged or older-format folder with one
line saying how to rebuild it. No TensorFlow, no model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from typing import BinaryIO, Callable

import numpy as np

from tpsearch_jax import user_errors

INDEX_META, INDEX_EMB, INDEX_PATHS = "index.json", "embeddings.npy", "paths.json"
INDEX_STATS, INDEX_FOREGROUND, INDEX_SKIPPED = "stats.npy", "foreground.npy", "skipped.json"
FORMAT_VERSION = 3


class BadIndex(user_errors.UserError):
  """An index folder that is missing files, damaged (checksum), or written in an older format."""


def rebuild_command(meta: dict, index_dir: str, workdir: str | None = None) -> str:
  """The `index` command line that rebuilds ``index_dir`` (with ``workdir``, default the recorded run)."""
  args = [f"--workdir={workdir or meta.get('workdir', 'RUN')}", f"--images={meta.get('images_root', 'IMAGES')}",
          f"--index={index_dir}"]
  return "python -m tpsearch_jax.search index " + " ".join(shlex.quote(a) for a in args)


def file_sha256(path: str) -> str:
  """The hex sha256 of a file's bytes (read in 1 MiB blocks)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def read_meta(index_dir: str) -> dict:
  """INDEX/index.json of a format-3 index; FileNotFoundError / BadIndex saying how to build or rebuild it."""
  meta_path = os.path.join(index_dir, INDEX_META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: build the index first (python -m tpsearch_jax.search index)")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadIndex(f"{meta_path} is not valid JSON ({e}): rebuild the index (python -m tpsearch_jax.search index)")
  version = meta.get("format_version", 1) if isinstance(meta, dict) else None
  if version != FORMAT_VERSION or not isinstance(meta.get("fingerprint"), dict):
    rebuild = rebuild_command(meta if isinstance(meta, dict) else {}, index_dir)
    raise BadIndex(f"{index_dir} is an index of format {version}; this version reads format {FORMAT_VERSION} only "
                   f"(it pins the checkpoint): rebuild it: {rebuild}")
  return meta


def read_index(index_dir: str) -> dict:
  """An index folder → {"meta", "paths", "embeddings" f32 [n, D], "stats" [n, 2] | None, "foreground" [n, N] | None}.

  Raises FileNotFoundError / BadIndex saying how to fix a missing, damaged (checksum) or older-format index.
  """
  meta = read_meta(index_dir)
  rebuild = rebuild_command(meta, index_dir)
  for name, digest in meta.get("sha256", {}).items():
    path = os.path.join(index_dir, name)
    if not os.path.isfile(path) or file_sha256(path) != digest:
      raise BadIndex(f"{path} is {'missing' if not os.path.isfile(path) else 'not the file index.json records'} "
                     f"(sha256 differs: changed or damaged since it was written): rebuild the index: {rebuild}")
  if set(meta.get("sha256", {})) < {INDEX_EMB, INDEX_PATHS}:
    raise BadIndex(f"{index_dir}/{INDEX_META} records no checksum of {INDEX_EMB} and {INDEX_PATHS}: rebuild the "
                   f"index: {rebuild}")
  with open(os.path.join(index_dir, INDEX_PATHS), encoding="utf-8") as f:
    paths = json.load(f)
  out = {"meta": meta, "paths": paths, "embeddings": np.load(os.path.join(index_dir, INDEX_EMB)).astype(np.float32)}
  for key, name in (("stats", INDEX_STATS), ("foreground", INDEX_FOREGROUND)):
    out[key] = np.load(os.path.join(index_dir, name)) if name in meta["sha256"] else None
  for key in ("embeddings", "stats", "foreground"):
    if out[key] is not None and out[key].shape[0] != len(paths):
      raise BadIndex(f"{index_dir}: {len(paths)} paths but {out[key].shape[0]} rows in {key}: rebuild the index: "
                     f"{rebuild}")
  if out["embeddings"].ndim != 2 or out["embeddings"].shape[1] != meta["fingerprint"].get("dim"):
    raise BadIndex(f"{index_dir}/{INDEX_EMB} holds vectors of shape {out['embeddings'].shape}, index.json records "
                   f"width {meta['fingerprint'].get('dim')}: rebuild the index: {rebuild}")
  return out


def replace_file(index_dir: str, name: str, write: Callable[[BinaryIO], object]) -> None:
  """Writes INDEX/name through a temporary file (``write(file)``), so a reader never sees half a file."""
  tmp = os.path.join(index_dir, name + ".tmp")
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, os.path.join(index_dir, name))


def save_array(index_dir: str, name: str, array: np.ndarray) -> None:
  """INDEX/name ← ``array`` as .npy (through a temporary file)."""
  replace_file(index_dir, name, lambda f: np.save(f, array))


def save_json(index_dir: str, name: str, value) -> None:
  """INDEX/name ← ``value`` as UTF-8 JSON (through a temporary file)."""
  replace_file(index_dir, name, lambda f: f.write(json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8")))
