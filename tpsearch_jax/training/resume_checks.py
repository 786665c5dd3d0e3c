"""Run identity: a work directory holding a run is only resumed or evaluated with the config it was made with.

``check_run_identity`` compares a new config with the run's ``config.json`` before anything is written: fields that
shape the state tree (the model, the dataset and its image / text shapes) can never change within a run; recipe
fields (optimizer, schedule, losses, data, batch size, seed, selection) only with ``train.allow_config_change``;
operational fields (``OPERATIONAL``: paths, threads, skip and check switches, logging and checkpoint cadence, the
mesh, the exact-equivalent MLM implementation) freely. ``--mode=eval`` may change only ``EVALUATION`` fields.

Every checkpoint's meta also holds ``settings(config)`` (the recipe fields), compared on resume by ``check_settings``
for runs whose folder has no config.json (copied checkpoints).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections
from absl import logging
from etils import epath

from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import runs
from tpsearch_jax.user_errors import UserError

SECTIONS = ("optim", "schedule", "loss", "data")
OPERATIONAL = frozenset({
    "data.root", "data.num_parallel_calls", "data.num_threads", "data.skip_corrupt", "data.skip_missing",
    "data.tfds_data_dir", "data.use_tfds", "data.verify_images", "data.check_cache", "data.tokenizer_path",
    "loss.mlm_head", "loss.mlm_capacity", "loss.mlm_group_rows",
})
# Also free between runs of one work directory (none changes what a step computes); prefixes end with ".".
_FREE = OPERATIONAL | {
    "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints", "train.async_checkpointing",
    "train.prefetch", "train.profile", "train.allow_config_change", "train.stall_timeout_s", "train.num_steps",
    "train.fsdp", "train.fsdp_min_size", "mesh.", "init.", "eval.splits", "eval.subsets", "eval.batch_size",
    "eval.block_size", "eval.checkpoint", "eval.every_epochs",
}
# Fields that decide the state tree (or which data the ids refer to): never changed within one run.
_STRUCTURAL = ("model.", "data.name", "data.image_size", "data.context_length", "data.tokenizer", "data.synthetic.")
# What --mode=eval may change: the free fields, anything under eval., and the compute dtype.
EVALUATION = _FREE | {"eval.", "model.dtype"}


def _matches(name: str, fields) -> bool:
  return any(name == f or (f.endswith(".") and name.startswith(f)) for f in fields)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _jsonable(config) -> dict[str, Any]:
  """A ConfigDict (or dict) as the plain JSON values config.json holds (tuples → lists)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(d, default=str))


def read_run_config(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/config.json (the run's resolved config) as a dict, or None when the folder holds none."""
  if not (epath.Path(ckpt_lib.resolve_dir(workdir)) / runs.CONFIG_FILE).exists():
    return None
  return runs.read_config(workdir).to_dict()


def config_differences(saved: Mapping[str, Any], config, allowed) -> list[str]:
  """["model.clip.vision_layers: 3 → 12", ...]: fields of ``config`` that differ from ``saved`` (a run's config.json)
  and are not ``allowed``. ``model.num_classes`` unset in ``config`` (filled from the data later) is not a difference."""
  old, new = _flat(saved), _flat(_jsonable(config))
  if new.get("model.num_classes") is None:
    new.pop("model.num_classes", None)
  return [d for d in differences(old, new) if not _matches(d.split(":")[0], allowed)]


def check_run_identity(config, workdir: str) -> None:
  """Refuses (UserError, one line, nothing written) to train in ``workdir`` with ``config`` (resolved:
  ``config_checks.resolve_config``) when it differs from the run's config.json in a structural field, or in a recipe
  field without ``train.allow_config_change``."""
  saved = read_run_config(workdir)
  if saved is None:
    return
  changed = config_differences(saved, config, _FREE)
  if not changed:
    return
  structural = [d for d in changed if _matches(d.split(":")[0], _STRUCTURAL) and not d.startswith("model.dtype:")]
  forward = (f"rerun with the run's own config (the one {runs.CONFIG_FILE} there was written from), or use a new "
             "--workdir")
  if structural:
    raise UserError(f"{workdir} holds a run made with another config: {'; '.join(changed)}. Nothing was changed. "
                    f"The model and data shape cannot change within a run: {forward}")
  if config.train.allow_config_change:
    logging.warning("continuing %s under changed settings (train.allow_config_change=True): %s", workdir,
                    "; ".join(changed))
    return
  raise UserError(f"{workdir} holds a run made with other settings: {'; '.join(changed)}. Nothing was changed: "
                  f"{forward}, or add --config.train.allow_config_change=True to continue under the new settings")


def eval_config(given, saved: Mapping[str, Any] | None, workdir: str):
  """The config of ``--mode=eval`` in ``workdir``: ``saved`` (the run's config.json, ``read_run_config``), with the
  evaluation fields of ``given`` (a --config) applied; refuses a ``given`` that changes anything else. No run there
  (``saved`` None): ``given`` itself, else UserError."""
  if saved is None:
    if given is None:
      raise UserError(f"{workdir} holds no run ({runs.CONFIG_FILE} not found): pass the run's folder as --workdir, or "
                      "--config with init.clip (or init.bert/vit/resnet) to evaluate imported weights")
    return given
  if given is None:
    return ml_collections.ConfigDict(saved)
  changed = config_differences(saved, given, EVALUATION)
  if changed:
    raise UserError(f"--config changes fields of the run in {workdir}: {'; '.join(changed)}. --mode=eval uses the "
                    "run's own config; a --config may change only evaluation fields (eval.*, data.root and the "
                    "other paths and thread counts, model.dtype, the mesh) — or leave --config out")
  return given


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
  """["optim.lr: 1e-05 → 0.001", ...] for every field both sides hold with different values (a field one side does
  not know was added or removed since, and is at its default on the other side)."""
  return [f"{key}: {saved[key]} → {current[key]}" for key in sorted(saved.keys() & current.keys())
          if saved[key] != current[key]]


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
