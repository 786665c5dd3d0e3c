"""Searching your own images with a trained run: find and encode images, build an index folder, query it.

An index folder holds ``embeddings.npy`` (float16, L2-normalised), ``paths.txt`` and ``index.json``. Images go
through the evaluation pipeline's preprocessing (``data.preprocess``), so an index ranks as evaluation measured.
No TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Sequence

import jax
import numpy as np
from absl import logging

from tpsearch_jax import sharding as shd
from tpsearch_jax.data import preprocess
from tpsearch_jax.models.clip import tokenizer
from tpsearch_jax.search import index as search_index
from tpsearch_jax.training import runs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INDEX_META, INDEX_EMB, INDEX_PATHS = "index.json", "embeddings.npy", "paths.txt"

load_image = preprocess.load_eval_image


def load_run(workdir: str, checkpoint: str = "auto"):
  """RUN folder → (config, model, mesh, params on the default mesh, checkpoint folder used)."""
  run = runs.load_run(workdir, checkpoint)
  return run.config, run.model, run.mesh, run.params, run.checkpoint


def find_images(root: str) -> list[str]:
  """Sorted absolute paths of the image files under ``root`` (recursive)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--images={root}: not a folder")
  found = []
  for folder, _, files in os.walk(root):
    found.extend(os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
  if not found:
    raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return sorted(os.path.abspath(p) for p in found)


def _encoder(model, mesh, method: str):
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method=method), out_shardings=shd.replicated(mesh))


def encode_images(model, mesh, params, paths: Sequence[str], image_size, batch_size: int, skip_bad: bool):
  """Image files → (float32 [n, D] L2-normalised embeddings, kept paths). Bad files raise or are skipped+logged."""
  batch_size = -(-batch_size // mesh.size) * mesh.size
  encode = _encoder(model, mesh, "encode_images")
  h, w = image_size
  embs, kept, bad = [], [], []
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      futures = [pool.submit(load_image, p, image_size) for p in chunk]
      images, ok = [], []
      for p, fut in zip(chunk, futures):
        try:
          images.append(fut.result())
          ok.append(p)
        except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for bad files)
          if not skip_bad:
            raise ValueError(f"cannot read image {p}: {e} (use --skip_bad to skip unreadable files)") from e
          bad.append((p, str(e)))
      if not images:
        continue
      x = np.zeros((batch_size, h, w, 3), np.float32)
      x[:len(images)] = np.stack(images)
      out = encode(params, shd.to_global({"images": x}, mesh)["images"])
      embs.append(np.asarray(out)[:len(images)])
      kept.extend(ok)
      logging.log_every_n_seconds(logging.INFO, "encoded %d / %d images", 10, start + len(chunk), len(paths))
  if bad:
    logging.warning("skipped %d unreadable image(s); first: %s", len(bad), bad[:5])
  if not embs:
    raise ValueError("no readable images to index")
  return np.concatenate(embs).astype(np.float32), kept


def encode_texts(model, mesh, params, sentences: Sequence[str], context_length: int) -> np.ndarray:
  """Sentences → float32 [n, D] L2-normalised embeddings."""
  ids = tokenizer.tokenize(list(sentences), context_length=context_length)
  n = len(ids)
  padded = -(-n // mesh.size) * mesh.size
  ids = np.concatenate([ids, np.zeros((padded - n, ids.shape[1]), ids.dtype)]) if padded > n else ids
  out = _encoder(model, mesh, "encode_texts")(params, shd.to_global({"ids": ids}, mesh)["ids"])
  return np.asarray(out)[:n].astype(np.float32)


def build(workdir: str, images: str, index_dir: str, checkpoint: str = "auto", batch_size: int = 64,
          skip_bad: bool = False) -> dict:
  """Encodes the images under ``images`` with the run in ``workdir`` and writes the index; returns its metadata."""
  config, model, mesh, params, source = load_run(workdir, checkpoint)
  paths = find_images(images)
  image_size = tuple(config.data.image_size)
  emb, kept = encode_images(model, mesh, params, paths, image_size, batch_size, skip_bad)
  os.makedirs(index_dir, exist_ok=True)
  np.save(os.path.join(index_dir, INDEX_EMB), emb.astype(np.float16))
  with open(os.path.join(index_dir, INDEX_PATHS), "w") as f:
    f.write("\n".join(kept) + "\n")
  meta = {"workdir": os.path.abspath(workdir), "checkpoint": source, "checkpoint_choice": checkpoint,
          "images_root": os.path.abspath(images), "num_images": len(kept), "num_skipped": len(paths) - len(kept),
          "dim": int(emb.shape[1]), "method": config.model.name, "image_size": list(image_size)}
  with open(os.path.join(index_dir, INDEX_META), "w") as f:
    json.dump(meta, f, indent=2)
  logging.info("Indexed %d images (%d skipped) into %s", len(kept), len(paths) - len(kept), index_dir)
  return meta


def query(index_dir: str, sentences: Sequence[str], k: int = 10):
  """Top-k gallery images per sentence → list of [(path, cosine)] lists (best first)."""
  meta_path = os.path.join(index_dir, INDEX_META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: build the index first (python -m tpsearch_jax.search index)")
  with open(meta_path) as f:
    meta = json.load(f)
  with open(os.path.join(index_dir, INDEX_PATHS)) as f:
    paths = f.read().splitlines()
  emb = np.load(os.path.join(index_dir, INDEX_EMB)).astype(np.float32)
  if len(paths) != emb.shape[0]:
    raise ValueError(f"{index_dir}: {len(paths)} paths but {emb.shape[0]} embeddings — rebuild the index")
  config, model, mesh, params, _ = load_run(meta["workdir"], meta["checkpoint_choice"])
  q = encode_texts(model, mesh, params, sentences, int(config.data.context_length))
  index = search_index.build_index(emb, np.arange(len(paths)), mesh=mesh, dtype=np.float32)
  k = min(k, len(paths))
  scores, ids = search_index.search_batched(index, q, k, query_batch=max(mesh.size, 8))
  return [[(paths[i], float(s)) for s, i in zip(srow, irow)] for srow, irow in zip(scores, ids)]
