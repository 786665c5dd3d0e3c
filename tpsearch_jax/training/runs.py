"""The one way to load a trained run: ``load_run(workdir, checkpoint)`` → ``Run`` (config, model, mesh, params, the
checkpoint folder and step, the run's ``Options``), from a work directory's best / last / a step folder.

Every caller takes the ``Run`` (``--mode=eval``, search's index build and pinned loading, the study, the notebooks,
``tpsearch_jax.load_run``); nothing unpacks a tuple. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from tpsearch_jax import sharding as shd
from tpsearch_jax.models import build_model
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.options import Options, run_options
from tpsearch_jax.user_errors import UserError, first_line

CONFIG_FILE = "config.json"


@dataclasses.dataclass
class Run:
  """A loaded run: its config, model, mesh, params (on the mesh), the checkpoint folder and step they came from, and
  its options (``run_options(config)``: what callers read instead of the config)."""

  config: ml_collections.ConfigDict
  model: Any
  mesh: Any
  params: Any
  checkpoint: str
  step: int
  options: Options


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (written by the trainer) → ConfigDict."""
  path = epath.Path(ckpt_lib.resolve_dir(workdir)) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run folder")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise UserError(f"{path} cannot be read ({first_line(e)}): it must be the config.json a training run wrote") \
        from e


def parse_choice(workdir: str, choice: str) -> tuple[str, str, int | None]:
  """"auto" | "best" | "last" | ".../checkpoints/<step>" | ".../best/<step>" → (workdir, choice or sub-folder, step)."""
  if choice in ckpt_lib.CHOICES:
    return ckpt_lib.resolve_dir(workdir), choice, None
  folder = os.path.abspath(choice)
  sub, step_name = os.path.basename(os.path.dirname(folder)), os.path.basename(folder)
  if sub not in (ckpt_lib.LAST, ckpt_lib.BEST) or not step_name.isdigit():
    raise UserError(f"checkpoint {choice!r}: expected auto|best|last or a folder <workdir>/checkpoints/<step> or "
                     "<workdir>/best/<step>")
  return os.path.dirname(os.path.dirname(folder)), sub, int(step_name)


def restore_params(abstract, workdir: str, choice: str = "auto") -> tuple[Any, str, int] | None:
  """(params, checkpoint folder, step) of ``choice`` in ``workdir``, or None when a choice finds no checkpoint."""
  root, which, step = parse_choice(workdir, choice)
  checkpointer = ckpt_lib.Checkpointer(root, async_save=False, create=False)
  try:
    if step is None:
      found = checkpointer.restore_choice(abstract, which)
      if found is None:
        return None
      state, meta, folder = found
      return state.params, folder, int(meta.get("step", os.path.basename(folder)))
    folder = checkpointer.directory(which, step)
    try:
      state, _ = checkpointer.restore(abstract, step, which)
    except FileNotFoundError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
      raise UserError(f"checkpoint {folder} cannot be read ({first_line(e)}); choose another step, best or "
                      "last") from e
    bad = ckpt_lib.nonfinite_leaves(state.params)
    if bad:
      raise UserError(f"checkpoint {folder} holds {len(bad)} non-finite parameter arrays (first {bad[0]}); choose "
                      "another step, best or last")
    return state.params, folder, step
  finally:
    checkpointer.close()


def load_run(workdir: str, checkpoint: str = "auto", *, config: ml_collections.ConfigDict | None = None,
             mesh=None) -> Run:
  """RUN folder + "auto" | "best" | "last" | a step folder → ``Run``: loads ``checkpoint`` of ``workdir`` with
  ``config`` (default: the run's own config.json) on ``mesh`` (default: every device, data parallel, so a run
  trained on any number of processes or devices and with any ``config.mesh`` loads here; params replicated unless
  ``config.train.fsdp``). Raises FileNotFoundError naming what was looked for."""
  config = read_config(workdir) if config is None else config
  mesh = shd.create_mesh() if mesh is None else mesh
  options = run_options(config)
  model = build_model(options)
  abstract, _, _ = state_lib.abstract_train_state(options, model, mesh)
  found = restore_params(abstract, workdir, checkpoint)
  if found is None:
    looked = ", ".join(ckpt_lib.CHOICES.get(checkpoint, (checkpoint,)))
    raise FileNotFoundError(f"no {checkpoint} checkpoint in {ckpt_lib.resolve_dir(workdir)} (looked in {looked})")
  params, folder, step = found
  logging.info("Loaded %s (step %d)", folder, step)
  return Run(config, model, mesh, params, folder, step, options)
