"""Converted params on disk (CLIP, BERT, ViT, ResNet): one msgpack file holding the Flax param tree and its
architecture. A tree with a NaN or Inf anywhere is never written."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from flax import serialization, traverse_util

from tpsearch_jax.models.clip.layouts import CheckpointError

FORMAT = "tpsearch_jax.clip_params.v1"


def save_params(params, path: str | os.PathLike, architecture: dict | None = None) -> None:
  """Writes a param tree (nested dict of float arrays) and an optional architecture dict to ``path`` atomically;
  CheckpointError naming the first tensor with a NaN or Inf (nothing is written then)."""
  path = pathlib.Path(path)
  host = _to_numpy(params)
  check_finite(host, f"refusing to write {path}")
  path.parent.mkdir(parents=True, exist_ok=True)
  blob = serialization.msgpack_serialize(
      {"format": FORMAT, "architecture": json.dumps(architecture or {}), "params": host})
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(blob)
  os.replace(tmp, path)


def load_params(path: str | os.PathLike) -> tuple[dict, dict]:
  """Reads a file written by ``save_params`` → (param tree of numpy arrays, architecture dict, {} if none)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no converted params file at {path}")
  try:
    blob = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types for garbage input
    raise CheckpointError(f"{path}: not a msgpack params file ({type(e).__name__}: {e}); convert the original "
                          "checkpoint again") from e
  if not isinstance(blob, dict) or blob.get("format") != FORMAT or "params" not in blob:
    raise CheckpointError(f"{path}: not a converted params file (expected format '{FORMAT}'); convert the original "
                          "checkpoint again")
  return blob["params"], json.loads(blob.get("architecture") or "{}")


def check_finite(tree, what: str) -> None:
  """Raises CheckpointError "<what>: tensor 'a/b/kernel' has n NaN and m Inf values of size" for the first one."""
  for key, leaf in traverse_util.flatten_dict(tree).items():
    x = np.asarray(leaf)
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
      nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
      raise CheckpointError(f"{what}: tensor '{'/'.join(map(str, key))}' has {nan} NaN and {inf} Inf values of "
                            f"{x.size}; the source checkpoint is damaged (download or export it again)")


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
