"""``--mode=eval``: evaluate a checkpoint of a work directory (or imported CLIP weights) on ``config.eval.splits``.

A run is evaluated with its own config (WORKDIR/config.json); a ``--config`` may change only evaluation fields
(``resume_checks.eval_config``). The results go to a file of their own,
``WORKDIR/results_eval_<best|checkpoints|init>_step<N>[_<k>].json``, with the config used beside it
(``…_config.json``): a training run's ``results.json`` and earlier evaluations are never overwritten. Nothing is
written into a folder that holds no run, unless imported weights (``config.init.*``) are evaluated there.
"""

from __future__ import annotations

import os

import ml_collections
from etils import epath

from tpsearch_jax import evaluate as eval_lib
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import resume_checks, runs
from tpsearch_jax.training.config_checks import resolve_config
from tpsearch_jax.training.setup import build_setup, has_pretrained, initial_state, write_config
from tpsearch_jax.user_errors import UserError


def results_name(source: str, step: int, workdir: str | None = None) -> str:
  """The eval-only results file name for a checkpoint folder (…/best/120 → results_eval_best_step120.json); with
  ``workdir``, the first of …_step120.json, …_step120_2.json, … that does not exist there yet."""
  kind = os.path.basename(os.path.dirname(source)) if os.path.basename(source).isdigit() else "init"
  stem = f"results_eval_{kind}_step{step}"
  if workdir is None:
    return stem + ".json"
  name, n = stem + ".json", 2
  while (epath.Path(workdir) / name).exists():
    name, n = f"{stem}_{n}.json", n + 1
  return name


def evaluate_only(config: ml_collections.ConfigDict | None, workdir: str) -> dict:
  """Evaluates ``config.eval.checkpoint`` of ``workdir`` (or imported ``config.init.clip``) on ``config.eval.splits``.

  config: None = the run's own config.json. "auto": the best checkpoint, else the newest of ``checkpoints/``, else
  ``config.init.clip``; "best"/"last" force one; any other value is a step folder (``…/checkpoints/<step>``).
  """
  workdir = ckpt_lib.resolve_dir(workdir)
  if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a run folder")
  saved = resume_checks.read_run_config(workdir)
  config = resume_checks.eval_config(config, saved, workdir)
  has_run = saved is not None or _has_checkpoints(workdir)
  if not has_run and not has_pretrained(config):
    raise UserError(f"{workdir} holds no run (no config.json, no checkpoints/ or best/): pass a training run's folder "
                    "as --workdir, or set config.init.clip (or init.bert/vit/resnet/run) to evaluate imported weights")
  s = build_setup(resolve_config(config), train=False)
  config = s.config
  which = config.eval.checkpoint
  found = None
  if has_run or which != "auto":
    try:
      found = runs.restore_params(s.abstract, workdir, which)
    except ckpt_lib.NoIntactCheckpoint:
      raise
    except ValueError as e:
      if isinstance(e, UserError):
        raise
      raise UserError(f"config.eval.checkpoint: {e}") from None
  if found is not None:
    params, source, step = found
  else:
    if which != "auto":
      raise FileNotFoundError(f"no {which} checkpoint in {workdir}")
    if not has_pretrained(config):
      raise FileNotFoundError(f"nothing to evaluate: no checkpoint in {workdir}/{ckpt_lib.BEST} or "
                              f"{workdir}/{ckpt_lib.LAST} and no --config.init.clip=PATH (or init.bert/vit/resnet/run)")
    inits = ", ".join(f"init.{f}={config.init[f]}" for f in ("clip", "bert", "vit", "resnet", "run")
                      if config.init.get(f))
    params, source, step = initial_state(s).params, inits, 0
  rows = s.evaluate(params, config.eval.splits, step, source)
  payload = eval_lib.results_payload(config, rows) | {"skipped": s.skipped(config.eval.splits)}
  name = results_name(source, step, workdir)
  write_config(config, os.path.join(workdir, name[:-len(".json")] + "_config.json"))
  eval_lib.report(workdir, payload, name)
  return payload


def _has_checkpoints(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints or WORKDIR/best holds a step folder."""
  for sub in (ckpt_lib.LAST, ckpt_lib.BEST):
    folder = epath.Path(workdir) / sub
    if folder.exists() and any(p.name.isdigit() for p in folder.iterdir()):
      return True
  return False
