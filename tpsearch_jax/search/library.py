"""Searching your own images with a trained run: find and encode images, build (incrementally) an index folder.

An index folder (format 3) holds
  embeddings.npy   float16 [n, D]  retrieval vectors (L2-normalised; D = M pieces × E, see ``explain``)
  paths.json       n absolute image paths, sorted (row i of every array); JSON, so any file name round-trips
  stats.npy        int64 [n, 2]    (size, mtime_ns) of each file when encoded: re-indexing encodes only new/changed ones
  foreground.npy   float16 [n, N]  the part model's foreground map over the N = gh·gw patches (part models only)
  skipped.json     unreadable files of the last run (with --skip_bad): [[path, error]]
  ann.faiss        the approximate index over embeddings.npy (``--kind=faiss`` only; ``ann``)
  index.json       written last: images root, the run, its fingerprint (config hash, checkpoint folder relative to
                   the run + step, D), the sha256 of every file above but skipped.json, the piece layout, the kind
                   ("exact" | "faiss", with its "ann" record) and, for a dataset split, "dataset"
Reading an index checks the checksums; ``load_pinned_run`` loads exactly the fingerprinted checkpoint (from the
recorded run folder or a moved copy of it) and refuses anything else with one line saying how to fix it. Images go
through the evaluation pipeline's preprocessing (``data.preprocess``), so an index ranks as evaluation measured.
No TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from typing import Sequence

import jax
import numpy as np
from absl import logging

from tpsearch_jax import user_errors
from tpsearch_jax.search import ann, encoding, explain
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import runs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INDEX_META, INDEX_EMB, INDEX_PATHS = "index.json", "embeddings.npy", "paths.json"
INDEX_STATS, INDEX_FOREGROUND, INDEX_SKIPPED = "stats.npy", "foreground.npy", "skipped.json"
CHECKSUMMED = (INDEX_EMB, INDEX_PATHS, INDEX_STATS, INDEX_FOREGROUND)
FORMAT_VERSION = 3


class FingerprintMismatch(user_errors.UserError):
  """An index queried with a run (config, checkpoint, vector width) other than the one that built it."""


class BadIndex(user_errors.UserError):
  """An index folder that is missing files, damaged (checksum), or written in an older format."""


def load_run(workdir: str, checkpoint: str = "auto"):
  """RUN folder → (config, model, mesh, params on the default mesh, checkpoint folder used)."""
  run = runs.load_run(workdir, checkpoint)
  return run.config, run.model, run.mesh, run.params, run.checkpoint


def config_hash(config) -> str:
  """16 hex digits of the sha256 of a run's canonical config JSON."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(run: runs.Run, workdir: str, dim: int) -> dict:
  """{"config_sha256", "checkpoint": its folder relative to ``workdir`` ("best/12"), "step", "dim": D} of a run."""
  rel = os.path.relpath(run.checkpoint, ckpt_lib.resolve_dir(workdir))
  return {"config_sha256": config_hash(run.config), "checkpoint": rel.replace(os.sep, "/"), "step": int(run.step),
          "dim": int(dim)}


def rebuild_command(meta: dict, index_dir: str, workdir: str | None = None) -> str:
  """The `index` command line that rebuilds ``index_dir`` (with ``workdir``, default the recorded run)."""
  args = [f"--workdir={workdir or meta.get('workdir', 'RUN')}", f"--images={meta.get('images_root', 'IMAGES')}",
          f"--index={index_dir}"]
  return "python -m tpsearch_jax.search index " + " ".join(shlex.quote(a) for a in args)


def text_dim(run: runs.Run) -> int:
  """D of the run's text retrieval vectors, from shapes only (nothing is computed)."""
  ids = jax.ShapeDtypeStruct((1, int(run.config.data.context_length)), np.int32)
  out = jax.eval_shape(lambda p, x: run.model.apply({"params": p}, x, method="encode_texts"), run.params, ids)
  return int(out.shape[-1])


def load_pinned_run(meta: dict, index_dir: str, workdir: str | None = None) -> runs.Run:
  """The run and checkpoint that built an index (``workdir``: the run folder moved there) → ``runs.Run``.

  Raises FingerprintMismatch, saying how to fix it, unless the config hash, the checkpoint folder + step and the
  vector width D all match the index's fingerprint; nothing is loaded before the config and checkpoint are checked.
  """
  fp, recorded = meta["fingerprint"], meta["workdir"]
  root = ckpt_lib.resolve_dir(workdir or recorded)
  rebuild = rebuild_command(meta, index_dir, workdir)
  if not os.path.isfile(os.path.join(root, runs.CONFIG_FILE)):
    if workdir:
      raise FingerprintMismatch(f"--workdir={workdir} has no {runs.CONFIG_FILE}: pass the folder of the run that "
                                f"built {index_dir} (recorded: {recorded})")
    raise FingerprintMismatch(f"the run that built {index_dir} is no longer at {recorded}: if it moved, pass "
                              f"--workdir=<its new folder>; else rebuild the index: {rebuild}")
  config = runs.read_config(root)
  if config_hash(config) != fp["config_sha256"]:
    raise FingerprintMismatch(f"{root}/{runs.CONFIG_FILE} has config {config_hash(config)}, but {index_dir} was "
                              f"built with config {fp['config_sha256']} ({recorded}): pass --workdir=<that run> or "
                              f"rebuild the index: {rebuild}")
  folder = os.path.join(root, *fp["checkpoint"].split("/"))
  if not os.path.isdir(folder):
    have = [f"{sub}/{s}" for sub in (ckpt_lib.BEST, ckpt_lib.LAST) if os.path.isdir(os.path.join(root, sub))
            for s in sorted(os.listdir(os.path.join(root, sub))) if s.isdigit()]
    raise FingerprintMismatch(f"{index_dir} was built with checkpoint {fp['checkpoint']} (step {fp['step']}), which "
                              f"{root} no longer has (it has: {', '.join(have) or 'none'}): rebuild the index: "
                              f"{rebuild}")
  try:
    run = runs.load_run(root, folder, config=config)
  except (user_errors.UserError, FileNotFoundError) as e:  # damaged: no other checkpoint can serve this index
    raise FingerprintMismatch(f"{index_dir} needs exactly {folder}: {e}; or rebuild the index: {rebuild}") from e
  if int(run.step) != int(fp["step"]) or text_dim(run) != int(fp["dim"]):
    raise FingerprintMismatch(f"{folder} is step {run.step} with vectors of width {text_dim(run)}, but {index_dir} "
                              f"records step {fp['step']} and width {fp['dim']}: rebuild the index: {rebuild}")
  return run


def inside(path: str, root: str) -> bool:
  """True when ``path`` resolves (symlinks followed) to a location inside the folder ``root``."""
  real, base = os.path.realpath(path), os.path.realpath(root)
  return os.path.commonpath([real, base]) == base


def find_images(root: str) -> list[str]:
  """Sorted absolute paths of the image files under ``root`` (recursive); symlinks leading out of it are skipped."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--images={root}: not a folder")
  found, outside = [], []
  for folder, _, files in os.walk(root):
    for f in files:
      if f.lower().endswith(IMAGE_EXTENSIONS):
        p = os.path.abspath(os.path.join(folder, f))
        (found if inside(p, root) else outside).append(p)
  if outside:
    logging.warning("skipped %d symlink(s) leading out of %s; first: %s", len(outside), root, outside[:3])
  if not found:
    raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return sorted(found)


def file_stats(paths: Sequence[str]) -> np.ndarray:
  """int64 [n, 2]: (size, mtime_ns) per path."""
  out = np.zeros((len(paths), 2), np.int64)
  for i, p in enumerate(paths):
    st = os.stat(p)
    out[i] = st.st_size, st.st_mtime_ns
  return out


def file_sha256(path: str) -> str:
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


def _same_model(a: dict, b: dict) -> bool:
  return all(a.get(k) == b.get(k) for k in ("config_sha256", "checkpoint", "step"))


def _reusable(index_dir: str, fp: dict, root: str) -> dict:
  """{path: (stats row, embedding row, foreground row | None)} of an existing index built by the same run, else {}."""
  if not os.path.isfile(os.path.join(index_dir, INDEX_META)):
    return {}
  try:
    old = read_index(index_dir)
  except (BadIndex, OSError, ValueError) as e:
    logging.info("%s cannot be reused (%s): encoding every image again", index_dir, e)
    return {}
  if not _same_model(old["meta"]["fingerprint"], fp) or old["stats"] is None or old["meta"].get("images_root") != root:
    logging.info("%s was built by another run or from another folder: encoding every image again", index_dir)
    return {}
  fg = old["foreground"]
  return {p: (old["stats"][i], old["embeddings"][i], None if fg is None else fg[i]) for i, p in enumerate(old["paths"])}


def _replace(index_dir: str, name: str, write) -> None:
  """Writes INDEX/name through a temporary file (``write(file)``), so a reader never sees half a file."""
  tmp = os.path.join(index_dir, name + ".tmp")
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, os.path.join(index_dir, name))


def _save(index_dir: str, name: str, array: np.ndarray) -> None:
  _replace(index_dir, name, lambda f: np.save(f, array))


def _save_json(index_dir: str, name: str, value) -> None:
  _replace(index_dir, name, lambda f: f.write(json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8")))


def build(workdir: str, images: str, index_dir: str, checkpoint: str = "auto", batch_size: int = 64,
          skip_bad: bool = False, progress: bool = False, paths: Sequence[str] | None = None,
          dataset: dict | None = None, kind: str = "exact", faiss_factory: str | None = None,
          faiss_probe: int | None = None) -> dict:
  """Encodes the new or changed images under ``images`` (or exactly ``paths`` [n] inside it: a dataset split,
  recorded as ``dataset`` {"name", "root", "split"}) with the run in ``workdir`` (all of them when the index was
  built by another run) and writes the index folder; ``kind="faiss"`` adds the approximate index (``ann``) over
  the same vectors. Returns its metadata (+ "num_encoded", "skipped")."""
  if kind not in ann.KINDS:
    raise user_errors.UserError(f"--kind must be one of {', '.join(ann.KINDS)}, got {kind!r}")
  run = runs.load_run(workdir, checkpoint)
  fp, root = fingerprint(run, workdir, text_dim(run)), os.path.abspath(images)
  paths = find_images(root) if paths is None else sorted(dict.fromkeys(os.path.abspath(p) for p in paths))
  stats = file_stats(paths)
  old = _reusable(index_dir, fp, root)
  todo = [p for p, st in zip(paths, stats) if p not in old or not np.array_equal(old[p][0], st)]
  image_size = tuple(run.config.data.image_size)
  logging.info("%d images under %s: %d to encode, %d already in the index", len(paths), root, len(todo),
               len(paths) - len(todo))
  normalization = run.config.data.get("normalization", "clip")  # runs from before the field: CLIP's
  new_emb, new_fg, kept, bad = (encoding.encode_images(run.model, run.mesh, run.params, todo, image_size, batch_size,
                                                       skip_bad, progress, normalization)
                                if todo else (None, None, [], []))
  fresh, changed = {p: i for i, p in enumerate(kept)}, set(todo)
  rows, emb, fg = [], [], []
  for i, p in enumerate(paths):
    if p in fresh:
      emb.append(new_emb[fresh[p]])
      fg.append(None if new_fg is None else new_fg[fresh[p]])
    elif p in old and p not in changed:
      emb.append(old[p][1])
      fg.append(old[p][2])
    else:
      continue
    rows.append(i)
  if not rows:
    raise user_errors.UserError(f"no readable images to index under {root}")
  os.makedirs(index_dir, exist_ok=True)
  layout = explain.layout_from_config(run.config, int(emb[0].shape[0]), None if fg[0] is None else len(fg[0]))
  _save(index_dir, INDEX_EMB, np.stack(emb).astype(np.float16))
  _save(index_dir, INDEX_STATS, stats[rows])
  _save_json(index_dir, INDEX_PATHS, [paths[i] for i in rows])
  _save_json(index_dir, INDEX_SKIPPED, [list(b) for b in bad])
  written, ann_record = [INDEX_EMB, INDEX_STATS, INDEX_PATHS], None
  if layout.has_parts:
    _save(index_dir, INDEX_FOREGROUND, np.stack(fg).astype(np.float16))
    written.append(INDEX_FOREGROUND)
  if kind == "faiss":
    stored = np.load(os.path.join(index_dir, INDEX_EMB)).astype(np.float32)  # exactly the vectors queries read back
    approx, ann_record = ann.build(stored / np.linalg.norm(stored, axis=1, keepdims=True), faiss_factory,
                                   faiss_probe)
    _replace(index_dir, ann.ANN_FILE, lambda f: f.write(ann.serialize(approx)))
    written.append(ann.ANN_FILE)
  for stale in {INDEX_FOREGROUND, ann.ANN_FILE, "paths.txt", "skipped.txt"} - set(written):  # format 2 names, a former part model
    if os.path.exists(os.path.join(index_dir, stale)):
      os.remove(os.path.join(index_dir, stale))
  meta = {"format_version": FORMAT_VERSION, "workdir": ckpt_lib.resolve_dir(workdir), "checkpoint": run.checkpoint,
          "checkpoint_choice": checkpoint, "fingerprint": fp, "images_root": root, "num_images": len(rows),
          "num_skipped": len(bad), "dim": fp["dim"], "method": run.config.model.name,
          "image_size": list(image_size), "context_length": int(run.config.data.context_length),
          "layout": layout.to_json(), "sha256": {n: file_sha256(os.path.join(index_dir, n)) for n in written}}
  if dataset:
    meta["dataset"] = dataset
  meta["kind"] = kind
  if ann_record:
    meta["ann"] = ann_record
  _save_json(index_dir, INDEX_META, meta)
  logging.info("Indexed %d images (%d encoded now, %d skipped) into %s", len(rows), len(kept), len(bad), index_dir)
  return dict(meta, num_encoded=len(kept), skipped=bad)
