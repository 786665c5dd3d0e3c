"""Resuming under other settings: what a checkpoint records of its config, and the refusal when it differs.

Every checkpoint's meta holds ``settings(config)``: the optimizer, schedule, loss and data fields, the global batch size
and the seed — everything that changes what the remaining steps compute. Fields that only say where or how fast
(paths, thread counts, skip and check switches, the exact-equivalent MLM implementation) are left out, so a moved
dataset or another machine resumes freely.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from absl import logging

from tpsearch_jax.user_errors import UserError

SECTIONS = ("optim", "schedule", "loss", "data")
OPERATIONAL = frozenset({
    "data.root", "data.num_parallel_calls", "data.num_threads", "data.skip_corrupt", "data.skip_missing",
    "data.tfds_data_dir", "data.use_tfds", "data.verify_images", "data.check_cache",
    "loss.mlm_head", "loss.mlm_capacity", "loss.mlm_group_rows",
})


def settings(config) -> dict[str, Any]:
  """{"section.field": JSON value} of the fields that decide the remaining steps (see the module docstring)."""
  flat = {"train.batch_size": config.train.batch_size, "seed": config.seed}
  for section in SECTIONS:
    for key, value in config[section].to_dict().items():
      name = f"{section}.{key}"
      if name not in OPERATIONAL:
        flat[name] = value
  return json.loads(json.dumps(flat, default=str))


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """["optim.lr: 1e-05 → 0.001", ...] for every field whose value differs (or exists on one side only)."""
  missing = object()
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, missing), current.get(key, missing)
    if a != b:
      out.append(f"{key}: {'(absent)' if a is missing else a} → {'(absent)' if b is missing else b}")
  return out


def check_settings(saved: Mapping[str, Any] | None, current: Mapping[str, Any], folder: str, *, allow: bool) -> None:
  """Raises UserError when ``saved`` (a checkpoint's settings) differs from ``current``, unless ``allow``."""
  if saved is None:
    logging.info("%s records no settings (written by an older version): the settings are not compared", folder)
    return
  changed = differences(saved, current)
  if not changed:
    return
  listing = "; ".join(changed)
  if allow:
    logging.warning("resuming %s under changed settings (train.allow_config_change=True): %s", folder, listing)
    return
  raise UserError(f"{folder} was trained with other settings: {listing}. Resume with the checkpoint's settings, add "
                  "--config.train.allow_config_change=True to continue under the new ones, or use a new --workdir")
