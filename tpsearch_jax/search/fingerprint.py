"""The run fingerprint of an index: which run, config and checkpoint built it, and loading exactly that one again.

An index records {"config_sha256" (``config_hash``), "checkpoint": its folder relative to the run ("best/12"), "step",
"dim": D}. ``load_pinned_run`` loads exactly the fingerprinted checkpoint (from the recorded run folder or a moved copy
of it) and refuses anything else with one line saying how to fix it. No TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from tpsearch_jax import user_errors
from tpsearch_jax.search.index_files import rebuild_command
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import runs


class FingerprintMismatch(user_errors.UserError):
  """An index queried with a run (config, checkpoint, vector width) other than the one that built it."""


def config_hash(config) -> str:
  """16 hex digits of the sha256 of a run's canonical config JSON."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_fingerprint(run: runs.Run, workdir: str, dim: int) -> dict:
  """{"config_sha256", "checkpoint": its folder relative to ``workdir`` ("best/12"), "step", "dim": D} of a run."""
  rel = os.path.relpath(run.checkpoint, ckpt_lib.resolve_dir(workdir))
  return {"config_sha256": config_hash(run.config), "checkpoint": rel.replace(os.sep, "/"), "step": int(run.step),
          "dim": int(dim)}


def text_dim(run: runs.Run) -> int:
  """D of the run's text retrieval vectors, from shapes only (nothing is computed)."""
  ids = jax.ShapeDtypeStruct((1, int(run.options.data.context_length)), np.int32)
  out = jax.eval_shape(lambda p, x: run.model.apply({"params": p}, x, method="encode_texts"), run.params, ids)
  return int(out.shape[-1])


def same_model(a: dict, b: dict) -> bool:
  """True when two fingerprints name the same config, checkpoint folder and step."""
  return all(a.get(k) == b.get(k) for k in ("config_sha256", "checkpoint", "step"))


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
