"""``--mode=eval``: evaluate a checkpoint of a work directory (or imported CLIP weights) on ``config.eval.splits``.

The results go to their own file, ``WORKDIR/results_eval_<best|checkpoints|init>_step<N>.json``: a training run's
``results.json`` is never overwritten.
"""

from __future__ import annotations

import os

import ml_collections

from tpsearch_jax import evaluate as eval_lib
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import runs
from tpsearch_jax.training.setup import build_setup, has_pretrained, initial_state
from tpsearch_jax.user_errors import UserError


def results_name(source: str, step: int) -> str:
  """The eval-only results file name for a checkpoint folder (…/best/120 → results_eval_best_step120.json)."""
  kind = os.path.basename(os.path.dirname(source)) if os.path.basename(source).isdigit() else "init"
  return f"results_eval_{kind}_step{step}.json"


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates ``config.eval.checkpoint`` of ``workdir`` (or imported ``config.init.clip``) on ``config.eval.splits``.

  "auto": the best checkpoint, else the newest of ``checkpoints/``, else ``config.init.clip``; "best"/"last" force
  one; any other value is a checkpoint step folder (``.../checkpoints/<step>`` or ``.../best/<step>``).
  """
  workdir = ckpt_lib.resolve_dir(workdir)
  s = build_setup(config, workdir, train=False, config_file="eval_config.json")
  config = s.config
  which = config.eval.checkpoint
  try:
    found = runs.restore_params(s.abstract, workdir, which)
  except ckpt_lib.NoIntactCheckpoint:
    raise
  except ValueError as e:
    raise UserError(f"config.eval.checkpoint: {e}") from None
  if found is not None:
    params, source, step = found
  else:
    if which != "auto":
      raise FileNotFoundError(f"no {which} checkpoint in {workdir}")
    if not has_pretrained(config):
      raise FileNotFoundError(f"nothing to evaluate: no checkpoint in {workdir}/{ckpt_lib.BEST} or "
                              f"{workdir}/{ckpt_lib.LAST} and no --config.init.clip=PATH (or init.bert/vit/resnet)")
    inits = ", ".join(f"init.{f}={config.init[f]}" for f in ("clip", "bert", "vit", "resnet") if config.init.get(f))
    params, source, step = initial_state(s).params, inits, 0
  rows = s.evaluate(params, config.eval.splits, step, source)
  payload = eval_lib.results_payload(config, rows) | {"skipped": s.skipped(config.eval.splits)}
  eval_lib.report(workdir, payload, results_name(source, step))
  return payload
