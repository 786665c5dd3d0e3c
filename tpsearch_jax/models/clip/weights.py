"""Import of pretrained CLIP weights (HF safetensors folder, OpenAI-layout ``.npz``, converted ``.msgpack``).

The architecture always comes from the checkpoint itself (HF ``config.json``; tensor shapes for OpenAI layouts), the
vision position grid is resampled to the requested image size, and the result is checked leaf by leaf against
``CLIP(config).init`` so nothing is loaded partially.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from tpsearch_jax.models.clip import layouts
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.clip.model import CLIP, CLIPConfig
from tpsearch_jax.models.clip.params_io import check_finite, load_params, save_params
from tpsearch_jax.models.clip.posemb import resize_posemb

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _dtype(x) -> np.dtype:
  return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def check_params(params: Mapping, config: CLIPConfig, source: str) -> None:
  """Raises listing missing / unexpected / mis-shaped / non-float32 leaves of ``params`` vs ``CLIP(config).init``."""
  h, w = config.image_size
  abstract = jax.eval_shape(lambda: CLIP(config).init(
      jax.random.key(0), jnp.zeros((1, h, w, 3), jnp.float32), jnp.zeros((1, config.context_length), jnp.int32)))
  want = {"/".join(k): v for k, v in traverse_util.flatten_dict(abstract["params"]).items()}
  try:
    have = {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(params)).items()}
  except (TypeError, AttributeError) as e:
    raise CheckpointError(f"{source}: params are not a nested dict of arrays ({e})") from e
  common = sorted(set(want) & set(have))
  problems = layouts.format_problems({
      "missing": sorted(set(want) - set(have)),
      "unexpected": sorted(set(have) - set(want)),
      "wrong shapes": [f"{k} {tuple(np.shape(have[k]))} (expected {want[k].shape})" for k in common
                       if tuple(np.shape(have[k])) != want[k].shape],
      "not float32": [f"{k} ({_dtype(have[k])})" for k in common if _dtype(have[k]) != np.float32],
  })
  if problems:
    raise CheckpointError(f"{source}: params do not match CLIP({layouts.architecture_summary(config)}); {problems}")


def check_image_size(image_size, patch: int, source: str) -> None:
  """CheckpointError unless ``image_size`` (H, W) is None or two positive multiples of the patch size."""
  if image_size is None:
    return
  h, w = (int(v) for v in image_size)
  if h < 1 or w < 1 or h % patch or w % patch:
    raise CheckpointError(f"{source}: image size {h},{w} is not two positive multiples of the checkpoint's patch "
                          f"size {patch}: pass --image_size=H,W with H and W multiples of {patch} (e.g. "
                          f"{24 * patch},{8 * patch})")


def convert_state_dict(state: Mapping[str, Any], image_size: tuple[int, int] | None = None, *,
                       hf_config: Mapping | None = None, vision_heads: int | None = None,
                       text_heads: int | None = None, source: str = "state dict") -> tuple[CLIPConfig, dict]:
  """Raw HF or OpenAI CLIP state dict (name → numpy array, torch layouts) → (CLIPConfig, Flax params float32).

  ``hf_config``: the parsed ``config.json`` (required for the HF layout). Heads of an OpenAI layout default to
  width // 64 (OpenAI's rule); pass them for models with other head widths. ``image_size`` (H, W) resamples the
  vision position grid; None keeps the checkpoint's resolution.
  """
  layout = layouts.detect_layout(state.keys(), source)
  if layout == "hf":
    if hf_config is None:
      raise CheckpointError(f"{source}: an HF-layout CLIP checkpoint needs its config.json (number of heads etc.)")
    native = layouts.hf_architecture(hf_config, source)
    for name, given in (("vision_heads", vision_heads), ("text_heads", text_heads)):
      if given is not None and given != getattr(native, name):
        raise CheckpointError(f"{source}: {name}={given} contradicts config.json ({getattr(native, name)})")
  else:
    native = layouts.openai_architecture(state, source, vision_heads, text_heads)
  check_image_size(image_size, native.patch_size, source)
  check_finite(dict(state), source)  # names the tensor as the source has it; save_params checks the result again
  unused = layouts.check_state(state, layout, native, source)
  hf_state = state if layout == "hf" else layouts.openai_to_hf(state, native)
  params = layouts.hf_to_flax(hf_state, native)
  config = native if image_size is None else dataclasses.replace(native, image_size=tuple(image_size))
  if config.grid != native.grid:
    params["visual"]["positional_embedding"] = resize_posemb(params["visual"]["positional_embedding"], native.grid,
                                                             config.grid)
    log.info("%s: vision position grid resampled %dx%d -> %dx%d (bilinear, half-pixel centres, no antialias)",
             source, *native.grid, *config.grid)
  if unused:
    log.info("%s: %d tensors not used by the model and dropped: %s", source, len(unused), ", ".join(unused))
  check_params(params, config, source)
  return config, params


def read_weights(path: PathLike) -> tuple[dict[str, np.ndarray], dict | None, str]:
  """A pretrained-weights folder / .safetensors / .npz → (name → numpy array, parsed config.json or None, source
  name)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
  if path.is_dir():
    weights = path / "model.safetensors"
    if not weights.is_file():
      present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "empty"
      raise FileNotFoundError(f"{path}: folder has no model.safetensors (found: {present}); sharded and "
                              f"pytorch_model.bin checkpoints are not supported, re-save with safe_serialization")
    path = weights
  if path.suffix == ".safetensors":
    try:
      state = safetensors.numpy.load_file(path)
    except Exception as e:  # safetensors raises its own error type plus OSError
      raise CheckpointError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e})") from e
  elif path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as npz:
        state = {k: npz[k] for k in npz.files}
    except Exception as e:  # zipfile / pickle / OS errors for non-npz content
      raise CheckpointError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from e
  else:
    raise CheckpointError(f"{path}: unsupported checkpoint type; expected a folder with model.safetensors, a "
                          f".safetensors or .npz file, or a converted .msgpack")
  hf_config = None
  config_path = path.parent / "config.json"
  if config_path.is_file():
    try:
      hf_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{config_path}: not valid JSON ({e})") from e
  elif layouts.HF_ANCHOR in state:
    raise FileNotFoundError(f"{path}: HF-layout weights but no config.json beside them ({config_path})")
  return state, hf_config, str(path)


def _with_runtime(config: CLIPConfig, dtype, remat: bool, attention_impl: str | None) -> CLIPConfig:
  dtype = jnp.dtype(dtype) if isinstance(dtype, str) else dtype
  return dataclasses.replace(config, dtype=dtype, remat=remat, attention_impl=attention_impl)


def load_clip(path: PathLike, image_size: tuple[int, int] | None = None, *, dtype: Any = jnp.float32,
              remat: bool = False, attention_impl: str | None = None, vision_heads: int | None = None,
              text_heads: int | None = None) -> tuple[CLIP, dict]:
  """Checkpoint → (CLIP module, params: nested dict of float32 numpy arrays) for images of ``image_size`` (H, W).

  ``path``: an HF folder (model.safetensors + config.json), an OpenAI-layout .npz, or a .msgpack from ``convert_clip``.
  ``dtype``/``remat``/``attention_impl`` set the compute options of the returned module; params stay float32.
  """
  path = pathlib.Path(path)
  if path.suffix == ".msgpack":
    params, arch = load_params(path)
    if not arch:
      raise CheckpointError(f"{path}: converted params carry no architecture; re-create it with "
                            "python -m tpsearch_jax.models.convert_weights")
    config = CLIPConfig.from_dict(arch)
    if image_size is not None and tuple(image_size) != config.image_size:
      raise CheckpointError(f"{path}: converted for images {config.image_size}, requested {tuple(image_size)}; "
                            f"convert again from the original checkpoint (resampling twice is lossy)")
    check_params(params, config, str(path))
  else:
    state, hf_config, source = read_weights(path)
    config, params = convert_state_dict(state, image_size, hf_config=hf_config, vision_heads=vision_heads,
                                        text_heads=text_heads, source=source)
  log.info("Loaded CLIP from %s: %s", path, layouts.architecture_summary(config))
  return CLIP(_with_runtime(config, dtype, remat, attention_impl)), params


def load_clip_params(path: PathLike, config: CLIPConfig) -> dict:
  """Params for an already-configured ``CLIP(config)``; raises naming every architecture field that differs."""
  model, params = load_clip(path, config.image_size, vision_heads=config.vision_heads, text_heads=config.text_heads)
  have, want = layouts.architecture_fields(model.config), layouts.architecture_fields(config)
  diff = [f"{k}: checkpoint {have[k]} vs configured {want[k]}" for k in want if have[k] != want[k]]
  if diff:
    raise CheckpointError(f"{path}: checkpoint architecture differs from the model config: " + "; ".join(diff))
  return params


def convert_clip(src: PathLike, dst: PathLike, image_size: tuple[int, int] | None = None, *,
                 vision_heads: int | None = None, text_heads: int | None = None) -> CLIPConfig:
  """Converts ``src`` (any ``load_clip`` input) once into a .msgpack at ``dst``; returns its architecture."""
  model, params = load_clip(src, image_size, vision_heads=vision_heads, text_heads=text_heads)
  save_params(params, dst, layouts.architecture_fields(model.config))
  return model.config
