"""Converted CLIP params on disk: one msgpack file holding the Flax param tree and its architecture."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from flax import serialization

FORMAT = "tpsearch_jax.clip_params.v1"


def save_params(params, path: str | os.PathLike, architecture: dict | None = None) -> None:
  """Writes a param tree (nested dict of float arrays) and an optional architecture dict to ``path`` atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  host = _to_numpy(params)
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
    raise ValueError(f"{path}: not a msgpack params file ({type(e).__name__}: {e})") from e
  if not isinstance(blob, dict) or blob.get("format") != FORMAT or "params" not in blob:
    raise ValueError(f"{path}: not a converted CLIP params file (expected format '{FORMAT}')")
  return blob["params"], json.loads(blob.get("architecture") or "{}")


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
