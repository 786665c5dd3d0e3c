"""Reading Hugging Face model folders (``config.json`` + ``model.safetensors``) for the BERT, ViT and ResNet imports.

Shared by ``models/bert``, ``models/vit`` and ``models/resnet``: the folder is read into numpy, the task-head prefix of
``*For…`` checkpoints (``bert.``, ``vit.``, ``resnet.``) is removed, tensors of heads the backbone does not use are
dropped (logged), and every remaining tensor is checked against the expected names and shapes, all problems reported
together in one ``CheckpointError`` (the same error type and message layout as the CLIP import).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping

import numpy as np
import safetensors.numpy

from tpsearch_jax.models.clip.layouts import CheckpointError, format_problems
from tpsearch_jax.models.clip.params_io import load_params

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def read_folder(path: PathLike, what: str) -> tuple[dict[str, np.ndarray], dict, str]:
  """An HF folder (or its model.safetensors) → (name → numpy array, parsed config.json, source name for messages)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{what} checkpoint not found: {path}")
  weights = path / "model.safetensors" if path.is_dir() else path
  if not weights.is_file():
    present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "empty"
    raise FileNotFoundError(f"{path}: folder has no model.safetensors (found: {present}); sharded and "
                            f"pytorch_model.bin checkpoints are not supported, re-save with safe_serialization")
  if weights.suffix != ".safetensors":
    raise CheckpointError(f"{weights}: unsupported {what} checkpoint type; expected an HF folder with "
                          f"model.safetensors + config.json, or a .msgpack written by the convert CLI")
  try:
    state = safetensors.numpy.load_file(weights)
  except Exception as e:  # safetensors raises its own error type plus OSError
    raise CheckpointError(f"{weights}: cannot read as safetensors ({type(e).__name__}: {e})") from e
  config_path = weights.parent / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{weights}: no config.json beside the weights ({config_path}); the {what} architecture "
                            f"is read from it")
  try:
    config = json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
  if not isinstance(config, dict):
    raise CheckpointError(f"{config_path}: expected a JSON object")
  return state, config, str(weights)


def read_converted(path: PathLike, kind: str) -> tuple[dict, dict]:
  """A .msgpack from the convert CLI → (tree, architecture); raises unless it was converted as ``kind``."""
  tree, arch = load_params(path)
  if arch.get("kind") != kind:
    raise CheckpointError(f"{path}: converted as {arch.get('kind') or 'clip'!r}, not {kind!r}")
  return tree, arch


def require_model_type(config: Mapping, expected: str, source: str) -> None:
  """Raises unless config.json's model_type is ``expected`` (e.g. a CLIP folder passed as BERT)."""
  model_type = config.get("model_type")
  if model_type != expected:
    raise CheckpointError(f"{source}: config.json model_type is {model_type!r}, expected {expected!r}")


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str, anchor: str) -> dict[str, np.ndarray]:
  """Removes the ``prefix`` of a task model (``bert.`` in BertForPreTraining) when ``prefix + anchor`` is present."""
  if prefix + anchor not in state:
    return dict(state)
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def drop_unused(state: Mapping[str, np.ndarray], prefixes: Iterable[str], suffixes: Iterable[str],
                source: str) -> dict[str, np.ndarray]:
  """Drops (and logs) tensors whose name starts with one of ``prefixes`` or ends with one of ``suffixes``."""
  prefixes, suffixes = tuple(prefixes), tuple(suffixes)
  kept = {k: v for k, v in state.items() if not (k.startswith(prefixes) or k.endswith(suffixes))}
  dropped = sorted(set(state) - set(kept))
  if dropped:
    log.info("%s: %d tensors not used by the backbone and dropped: %s", source, len(dropped),
             ", ".join(dropped[:12]) + (" ..." if len(dropped) > 12 else ""))
  return kept


def check_tensors(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], source: str,
                  description: str) -> None:
  """Raises listing every missing / unexpected / mis-shaped / non-float tensor of ``state`` against ``expected``."""
  missing = [f"'{k}'" for k in expected if k not in state]
  extra = [f"'{k}'" for k in sorted(state) if k not in expected]
  wrong = [f"'{k}' {tuple(np.shape(state[k]))} (expected {s})" for k, s in expected.items()
           if k in state and tuple(np.shape(state[k])) != tuple(s)]
  not_float = [f"'{k}' ({np.asarray(state[k]).dtype})" for k in expected
               if k in state and not np.issubdtype(np.asarray(state[k]).dtype, np.floating)]
  problems = format_problems({"missing tensors": missing, "unexpected tensors": extra, "wrong shapes": wrong,
                              "non-float tensors": not_float})
  if problems:
    raise CheckpointError(f"{source}: checkpoint does not match the architecture {description}; {problems}")


def f32(x) -> np.ndarray:
  """Any array → float32 numpy."""
  return np.asarray(x, dtype=np.float32)


def dense(state: Mapping[str, np.ndarray], name: str) -> dict:
  """torch Linear ``name.weight`` (out, in) / ``name.bias`` → Flax Dense {"kernel": (in, out), "bias"}."""
  return {"kernel": f32(state[name + ".weight"]).T, "bias": f32(state[name + ".bias"])}


def layer_norm(state: Mapping[str, np.ndarray], name: str) -> dict:
  """torch LayerNorm ``name.weight`` / ``name.bias`` → Flax {"scale", "bias"}."""
  return {"scale": f32(state[name + ".weight"]), "bias": f32(state[name + ".bias"])}


def conv(state: Mapping[str, np.ndarray], name: str, bias: bool) -> dict:
  """torch Conv2d ``name.weight`` (O, I, kh, kw) → Flax Conv {"kernel": (kh, kw, I, O)} (+ "bias")."""
  out = {"kernel": f32(state[name + ".weight"]).transpose(2, 3, 1, 0)}
  if bias:
    out["bias"] = f32(state[name + ".bias"])
  return out


def pair(value, field: str, source: str) -> tuple[int, int]:
  """An HF size field (int or [h, w]) → (h, w)."""
  if isinstance(value, int):
    return value, value
  try:
    h, w = (int(v) for v in value)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: config.json {field} {value!r} is neither an int nor [h, w]") from e
  return h, w
