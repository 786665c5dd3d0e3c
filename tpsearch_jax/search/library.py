"""Searching your own images with a trained run: find and encode images, build (incrementally) an index folder.

An index folder holds
  embeddings.npy   float16 [n, D]  retrieval vectors (L2-normalised; D = M pieces × E, see ``explain``)
  paths.txt        n absolute image paths, sorted (row i of every array)
  stats.npy        int64 [n, 2]    (size, mtime_ns) of each file when encoded: re-indexing encodes only new/changed ones
  foreground.npy   float16 [n, N]  the part model's foreground map over the N = gh·gw patches (part models only)
  skipped.txt      unreadable files of the last run (with --skip_bad), one "path<TAB>error" a line
  index.json       metadata: images root, the run and its fingerprint (config hash + checkpoint step), piece layout
Images go through the evaluation pipeline's preprocessing (``data.preprocess``), so an index ranks as evaluation
measured. No TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from tpsearch_jax import sharding as shd
from tpsearch_jax.data import preprocess
from tpsearch_jax.models.clip import tokenizer
from tpsearch_jax.search import explain
from tpsearch_jax.training import runs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INDEX_META, INDEX_EMB, INDEX_PATHS = "index.json", "embeddings.npy", "paths.txt"
INDEX_STATS, INDEX_FOREGROUND, INDEX_SKIPPED = "stats.npy", "foreground.npy", "skipped.txt"
FORMAT_VERSION = 2

load_image = preprocess.load_eval_image


class FingerprintMismatch(ValueError):
  """An index queried with a run (config or checkpoint step) other than the one that built it."""


def load_run(workdir: str, checkpoint: str = "auto"):
  """RUN folder → (config, model, mesh, params on the default mesh, checkpoint folder used)."""
  run = runs.load_run(workdir, checkpoint)
  return run.config, run.model, run.mesh, run.params, run.checkpoint


def fingerprint(run: runs.Run) -> dict:
  """{"config_sha256": hash of the run's canonical config JSON, "step": checkpoint step} of a loaded run."""
  text = json.dumps(run.config.to_dict(), sort_keys=True, default=str)
  return {"config_sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "step": int(run.step)}


def check_fingerprint(meta: dict, run: runs.Run, index_dir: str) -> None:
  """Raises FingerprintMismatch (saying how to fix it) unless ``run`` is the run that built the index."""
  want, have = meta.get("fingerprint"), fingerprint(run)
  if want is None:
    logging.warning("%s was built before indexes stored a model fingerprint; re-run `index` to add one", index_dir)
    return
  if want != have:
    raise FingerprintMismatch(
        f"index {index_dir} was built with {meta['workdir']} at step {want['step']} (config {want['config_sha256']}), "
        f"but the run loaded now is at step {have['step']} (config {have['config_sha256']}): its embeddings do not "
        f"match this model. Rebuild it: python -m tpsearch_jax.search index --workdir={meta['workdir']} "
        f"--images={meta['images_root']} --index={index_dir}")


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


@functools.lru_cache(maxsize=8)
def image_encoder(model, mesh):
  """jit(params, images [B, H, W, 3]) → (retrieval vectors f32 [B, D], foreground f32 [B, N] or None), replicated.

  One per (model, mesh): indexing again in the same process compiles nothing."""

  def fn(module, x):
    emb = module.image_embeddings(x)
    return module._retrieval_vector(emb), emb.get("foreground")  # pylint: disable=protected-access

  return jax.jit(lambda p, x: model.apply({"params": p}, x, method=fn), out_shardings=shd.replicated(mesh))


@functools.lru_cache(maxsize=8)
def text_encoder(model, mesh):
  """jit(params, ids int [B, L]) → retrieval vectors f32 [B, D], replicated (one per model and mesh)."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_texts"), out_shardings=shd.replicated(mesh))


def encode_images(model, mesh, params, paths: Sequence[str], image_size, batch_size: int, skip_bad: bool,
                  progress: bool = False, normalization: str = "clip"):
  """Image files → (f32 [n, D] vectors, f32 [n, N] foreground or None, kept paths [n], bad [(path, error)]).

  An unreadable file raises ValueError naming it unless ``skip_bad``. ``progress``: a progress bar on stderr.
  """
  batch_size = -(-batch_size // mesh.size) * mesh.size
  encode = image_encoder(model, mesh)
  h, w = image_size
  embs, fgs, kept, bad = [], [], [], []
  bar = tqdm(total=len(paths), unit="img", desc="encoding", file=sys.stderr, disable=not progress)
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      futures = [pool.submit(load_image, p, image_size, normalization) for p in chunk]
      images, ok = [], []
      for p, fut in zip(chunk, futures):
        try:
          images.append(fut.result())
          ok.append(p)
        except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for bad files)
          if not skip_bad:
            bar.close()
            raise ValueError(f"cannot read image {p}: {e} (use --skip_bad to skip unreadable files)") from e
          bad.append((p, f"{type(e).__name__}: {e}"))
      bar.update(len(chunk))
      if not images:
        continue
      x = np.zeros((batch_size, h, w, 3), np.float32)
      x[:len(images)] = np.stack(images)
      vec, fg = encode(params, shd.to_global({"images": x}, mesh)["images"])
      embs.append(np.asarray(vec)[:len(images)])
      if fg is not None:
        fgs.append(np.asarray(fg)[:len(images)])
      kept.extend(ok)
      if not progress:
        logging.log_every_n_seconds(logging.INFO, "encoded %d / %d images", 10, start + len(chunk), len(paths))
  bar.close()
  if bad:
    logging.warning("skipped %d unreadable image(s); first: %s", len(bad), bad[:5])
  emb = np.concatenate(embs).astype(np.float32) if embs else None
  fg = np.concatenate(fgs).astype(np.float32) if fgs else None
  return emb, fg, kept, bad


def encode_texts(model, mesh, params, sentences: Sequence[str], context_length: int, encoder=None,
                 tokenize=tokenizer.tokenize) -> np.ndarray:
  """Sentences → float32 [n, D] L2-normalised retrieval vectors (``encoder``: a ``text_encoder`` to reuse;
  ``tokenize``: the run's caption tokenizer, ``text_tokenizers.caption_tokenizer(config.data)``)."""
  ids = tokenize(list(sentences), context_length)
  n = len(ids)
  padded = -(-n // mesh.size) * mesh.size
  ids = np.concatenate([ids, np.zeros((padded - n, ids.shape[1]), ids.dtype)]) if padded > n else ids
  encoder = text_encoder(model, mesh) if encoder is None else encoder
  out = encoder(params, shd.to_global({"ids": ids}, mesh)["ids"])
  return np.asarray(out)[:n].astype(np.float32)


def read_index(index_dir: str) -> dict:
  """An index folder → {"meta", "paths", "embeddings" f32 [n, D], "stats" [n, 2] | None, "foreground" [n, N] | None}.

  Raises FileNotFoundError / ValueError saying how to fix a missing or inconsistent index.
  """
  meta_path = os.path.join(index_dir, INDEX_META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: build the index first (python -m tpsearch_jax.search index)")
  with open(meta_path) as f:
    meta = json.load(f)
  with open(os.path.join(index_dir, INDEX_PATHS)) as f:
    paths = f.read().splitlines()
  out = {"meta": meta, "paths": paths, "embeddings": np.load(os.path.join(index_dir, INDEX_EMB)).astype(np.float32)}
  for key, name in (("stats", INDEX_STATS), ("foreground", INDEX_FOREGROUND)):
    p = os.path.join(index_dir, name)
    out[key] = np.load(p) if os.path.isfile(p) else None
  for key in ("embeddings", "stats", "foreground"):
    if out[key] is not None and out[key].shape[0] != len(paths):
      raise ValueError(f"{index_dir}: {len(paths)} paths but {out[key].shape[0]} rows in {key} — rebuild the index")
  return out


def _reusable(index_dir: str, fp: dict, root: str) -> dict:
  """{path: (stats row, embedding row, foreground row | None)} of an existing index built by the same run, else {}."""
  if not os.path.isfile(os.path.join(index_dir, INDEX_META)):
    return {}
  old = read_index(index_dir)
  if old["meta"].get("fingerprint") != fp or old["stats"] is None or old["meta"].get("images_root") != root:
    logging.info("%s was built by another run or from another folder: encoding every image again", index_dir)
    return {}
  fg = old["foreground"]
  return {p: (old["stats"][i], old["embeddings"][i], None if fg is None else fg[i]) for i, p in enumerate(old["paths"])}


def _save(index_dir: str, name: str, array: np.ndarray) -> None:
  tmp = os.path.join(index_dir, name + ".tmp.npy")
  np.save(tmp, array)
  os.replace(tmp, os.path.join(index_dir, name))


def build(workdir: str, images: str, index_dir: str, checkpoint: str = "auto", batch_size: int = 64,
          skip_bad: bool = False, progress: bool = False) -> dict:
  """Encodes the new or changed images under ``images`` with the run in ``workdir`` (all of them when the index was
  built by another run) and writes the index folder; returns its metadata (+ "num_encoded", "skipped")."""
  run = runs.load_run(workdir, checkpoint)
  fp, root = fingerprint(run), os.path.abspath(images)
  paths = find_images(root)
  stats = file_stats(paths)
  old = _reusable(index_dir, fp, root)
  todo = [p for p, st in zip(paths, stats) if p not in old or not np.array_equal(old[p][0], st)]
  image_size = tuple(run.config.data.image_size)
  logging.info("%d images under %s: %d to encode, %d already in the index", len(paths), root, len(todo),
               len(paths) - len(todo))
  normalization = run.config.data.get("normalization", "clip")  # runs from before the field: CLIP's
  new_emb, new_fg, kept, bad = (encode_images(run.model, run.mesh, run.params, todo, image_size, batch_size, skip_bad,
                                              progress, normalization) if todo else (None, None, [], []))
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
    raise ValueError(f"no readable images to index under {root}")
  os.makedirs(index_dir, exist_ok=True)
  layout = explain.layout_from_config(run.config, int(emb[0].shape[0]), None if fg[0] is None else len(fg[0]))
  _save(index_dir, INDEX_EMB, np.stack(emb).astype(np.float16))
  _save(index_dir, INDEX_STATS, stats[rows])
  if layout.has_parts:
    _save(index_dir, INDEX_FOREGROUND, np.stack(fg).astype(np.float16))
  elif os.path.exists(os.path.join(index_dir, INDEX_FOREGROUND)):
    os.remove(os.path.join(index_dir, INDEX_FOREGROUND))
  with open(os.path.join(index_dir, INDEX_PATHS), "w") as f:
    f.write("\n".join(paths[i] for i in rows) + "\n")
  with open(os.path.join(index_dir, INDEX_SKIPPED), "w") as f:
    f.write("".join(f"{p}\t{e}\n" for p, e in bad))
  meta = {"format_version": FORMAT_VERSION, "workdir": os.path.abspath(workdir), "checkpoint": run.checkpoint,
          "checkpoint_choice": checkpoint, "fingerprint": fp, "images_root": root, "num_images": len(rows),
          "num_skipped": len(bad), "dim": int(emb[0].shape[0]), "method": run.config.model.name,
          "image_size": list(image_size), "context_length": int(run.config.data.context_length),
          "layout": layout.to_json()}
  with open(os.path.join(index_dir, INDEX_META), "w") as f:
    json.dump(meta, f, indent=2)
  logging.info("Indexed %d images (%d encoded now, %d skipped) into %s", len(rows), len(kept), len(bad), index_dir)
  return dict(meta, num_encoded=len(kept), skipped=bad)
