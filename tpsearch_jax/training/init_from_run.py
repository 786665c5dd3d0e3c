"""``config.init.run``: start a run from the parameters of another run of this project.

``WORKDIR`` takes its best checkpoint, else its newest in ``checkpoints/``; ``WORKDIR:STEP`` takes step STEP (from
``best/`` if it is there, else ``checkpoints/``). The source run is loaded with its own ``config.json``
(``runs.load_run``), its params restored through orbax with shardings on this run's mesh (every process reads its own
shards). Then every parameter of this model whose path exists in the source with the same shape takes the source's
value (cast to this run's dtype, placed with this run's sharding); the rest (part model, classifier, heads the source
lacks) keep their fresh initialisation from ``config.seed``. ``config.init.run_exclude`` (a regex on "a/b/c"
parameter paths) keeps matching parameters fresh as well. A path present in both with different shapes is a one-line
``UserError`` naming the tensor; source parameters this model lacks are ignored (counted in the start-up table).
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any

import jax
from absl import logging

from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import optim
from tpsearch_jax.training import runs
from tpsearch_jax.user_errors import UserError


def parse_spec(spec: str) -> tuple[str, int | None]:
  """"WORKDIR" | "WORKDIR:STEP" → (work directory, step or None)."""
  head, sep, tail = str(spec).rpartition(":")
  if sep and tail.isdigit() and head:
    return head, int(tail)
  return str(spec), None


def load_source_run(spec: str, mesh) -> runs.Run:
  """``config.init.run`` value → that run (``runs.load_run``), its params as jax.Arrays on ``mesh``."""
  workdir, step = parse_spec(spec)
  if not os.path.isdir(ckpt_lib.resolve_dir(workdir)):
    raise UserError(f"config.init.run: {workdir} is not a directory (expected a training run folder)")
  if step is None:
    choice = "auto"
  else:
    root = ckpt_lib.resolve_dir(workdir)
    folders = [os.path.join(root, sub, str(step)) for sub in (ckpt_lib.BEST, ckpt_lib.LAST)]
    found = [f for f in folders if os.path.isdir(f)]
    if not found:
      raise UserError(f"config.init.run: no step {step} in {folders[0]} or {folders[1]}")
    choice = found[0]
  try:
    return runs.load_run(workdir, choice, mesh=mesh)
  except FileNotFoundError as e:  # no config.json, or no checkpoint
    raise UserError(f"config.init.run: {e}") from None


def _leaves(tree) -> dict[str, Any]:
  return {optim.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def plan(fresh, source, exclude: str | None = None) -> dict[str, str]:
  """{path: "loaded" | "new" | "excluded"} for every leaf of ``fresh`` (arrays or ShapeDtypeStructs), and
  "unused" for source leaves this model lacks. A path in both with different shapes raises UserError."""
  want, have = _leaves(fresh), _leaves(source)
  pattern = re.compile(exclude) if exclude else None
  out = {}
  for path, leaf in want.items():
    if pattern is not None and pattern.search(path):
      out[path] = "excluded"
    elif path not in have:
      out[path] = "new"
    elif tuple(have[path].shape) != tuple(leaf.shape):
      raise UserError(f"config.init.run: parameter {path} has shape {tuple(have[path].shape)} in the run but "
                      f"{tuple(leaf.shape)} here (keep it fresh with --config.init.run_exclude)")
    else:
      out[path] = "loaded"
  out.update({path: "unused" for path in have if path not in want})
  return out


def table(fresh, source, decisions: dict[str, str]) -> str:
  """A text table per top-level module: tensors / parameters loaded, new (fresh or excluded), unused in the run."""
  sizes = {p: int(x.size) for p, x in _leaves(source).items()}
  sizes.update({p: int(x.size) for p, x in _leaves(fresh).items()})
  counts = collections.OrderedDict()
  for path, what in decisions.items():
    row = counts.setdefault(path.split("/")[0], collections.Counter())
    row[what + "_t"] += 1
    row[what + "_p"] += sizes[path]
  kinds = ("loaded", "new", "excluded", "unused")
  width = max([len("module")] + [len(k) for k in counts])
  lines = [f"{'module':<{width}}  " + " ".join(f"{k + ' tensors/params':>26}" for k in kinds)]
  for name, c in counts.items():
    lines.append(f"{name:<{width}}  " + " ".join(f"{c[k + '_t']:>10d} {c[k + '_p']:>15,d}" for k in kinds))
  return "\n".join(lines)


def merge(fresh, source, decisions: dict[str, str], shardings):
  """``fresh`` params with the "loaded" leaves taken from ``source`` (cast to the fresh dtype, placed with
  ``shardings``, one jitted copy so it works across processes)."""
  paths = [p for p, what in decisions.items() if what == "loaded"]
  want, have = _leaves(fresh), _leaves(source)
  shard_of = _leaves(shardings)
  dtypes = [want[p].dtype for p in paths]
  copied = jax.jit(lambda xs: [x.astype(d) for x, d in zip(xs, dtypes)],
                   out_shardings=[shard_of[p] for p in paths])([have[p] for p in paths])
  by_path = dict(zip(paths, copied))
  return jax.tree_util.tree_map_with_path(lambda p, x: by_path.get(optim.path_name(p), x), fresh)


def initialise_from_run(state, spec: str, exclude: str | None, mesh, tx, shardings):
  """TrainState → the same with params taken from the run ``spec`` ("WORKDIR[:STEP]", ``config.init.run``) where
  they match and ``exclude`` (``config.init.run_exclude``) does not (see the module docstring), and the optimizer
  state re-initialised on them; logs the loaded / new table."""
  source = load_source_run(spec, mesh)
  decisions = plan(state.params, source.params, exclude)
  logging.info("Initialising from %s (step %d), config.init.run:\n%s", source.checkpoint, source.step,
               table(state.params, source.params, decisions))
  params = merge(state.params, source.params, decisions, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state.replace(params=params, opt_state=opt_state)
