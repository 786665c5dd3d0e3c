"""Encoding for search: image files and sentences → retrieval vectors with a run's model (jitted once per model).

Images go through the evaluation pipeline's preprocessing (``data.preprocess``), so an index ranks as evaluation
measured. ``check_files`` decodes every file first so that all bad ones are reported together. No TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import sys
from typing import Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from tpsearch_jax import sharding as shd
from tpsearch_jax import user_errors
from tpsearch_jax.data import image_check, preprocess
from tpsearch_jax.models.clip import tokenizer

load_image = preprocess.load_eval_image
MAX_LISTED = 50  # bad files named in one error


class BadImages(user_errors.UserError):
  """Image files that cannot be read; the message lists every one (path and reason)."""


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


def check_files(paths: Sequence[str]) -> list[tuple[str, str]]:
  """Fully decodes every file of paths [n] (thread pool) → [(path, reason)] of those that do not decode."""
  result = image_check.check_images(list(paths), lambda p: p if os.path.isfile(p) else None,
                                    what="images to index")
  return list(result.bad)


def bad_files_error(bad: Sequence[tuple[str, str]], total: int) -> BadImages:
  """One error listing every bad file (the first ``MAX_LISTED``, then how many more) and the way out."""
  lines = [f"  {p}: {reason}" for p, reason in bad[:MAX_LISTED]]
  if len(bad) > MAX_LISTED:
    lines.append(f"  … and {len(bad) - MAX_LISTED} more")
  return BadImages(f"{len(bad)} of {total} image files cannot be read (nothing was encoded):\n" + "\n".join(lines)
                   + "\nfix or remove them, or pass --skip_bad to index the others (listed in skipped.json)")


def encode_images(model, mesh, params, paths: Sequence[str], image_size, batch_size: int, skip_bad: bool,
                  progress: bool = False, normalization: str = "clip", checked: bool = False):
  """Image files [n] → (f32 [n', D] vectors, f32 [n', N] foreground or None, kept paths [n'], bad [(path, error)]).

  Unless ``checked`` (the caller ran ``check_files``), every file is decoded first: without ``skip_bad`` any bad
  file raises ``BadImages`` listing all of them before anything is encoded. ``progress``: a bar on stderr counting
  images whose vectors are back on the host.
  """
  bad = [] if checked else check_files(paths)
  if bad and not skip_bad:
    raise bad_files_error(bad, len(paths))
  skip = {p for p, _ in bad}
  paths = [p for p in paths if p not in skip]
  batch_size = -(-batch_size // mesh.size) * mesh.size
  encode = image_encoder(model, mesh)
  h, w = image_size
  embs, fgs, kept = [], [], []
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
        except Exception as e:  # pylint: disable=broad-except  (changed since the check; PIL raises many types)
          if not skip_bad:
            bar.close()
            raise BadImages(f"cannot read image {p!r}: {e} (fix or remove it, or pass --skip_bad to skip "
                            "unreadable files)") from e
          bad.append((p, f"{type(e).__name__}: {e}"))
      if images:
        x = np.zeros((batch_size, h, w, 3), np.float32)
        x[:len(images)] = np.stack(images)
        vec, fg = encode(params, shd.to_global({"images": x}, mesh)["images"])
        embs.append(np.asarray(vec)[:len(images)])  # waits for the device: the bar counts finished images
        if fg is not None:
          fgs.append(np.asarray(fg)[:len(images)])
        kept.extend(ok)
      bar.update(len(chunk))
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
  """Sentences [n] → float32 [n, D] L2-normalised retrieval vectors (``encoder``: a ``text_encoder`` to reuse;
  ``tokenize``: the run's caption tokenizer, ``text_tokenizers.caption_tokenizer(config.data)``)."""
  ids = tokenize(list(sentences), context_length)
  n = len(ids)
  padded = -(-n // mesh.size) * mesh.size
  ids = np.concatenate([ids, np.zeros((padded - n, ids.shape[1]), ids.dtype)]) if padded > n else ids
  encoder = text_encoder(model, mesh) if encoder is None else encoder
  out = encoder(params, shd.to_global({"ids": ids}, mesh)["ids"])
  return np.asarray(out)[:n].astype(np.float32)


def encode_arrays(model, mesh, params, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
  """Preprocessed images f32 [B, H, W, 3] → retrieval vectors f32 [B, D] in one (padded) forward per batch."""
  batch_size = -(-(batch_size or len(images)) // mesh.size) * mesh.size
  encode, out = image_encoder(model, mesh), []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    x = np.zeros((batch_size, *images.shape[1:]), np.float32)
    x[:len(chunk)] = chunk
    vec, _ = encode(params, shd.to_global({"images": x}, mesh)["images"])
    out.append(np.asarray(vec)[:len(chunk)])
  return np.concatenate(out).astype(np.float32)
