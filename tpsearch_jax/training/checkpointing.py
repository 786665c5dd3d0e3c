"""Checkpoints in the work directory (orbax ``CheckpointManager``, v0 args API) and SIGTERM handling.

Layout: ``WORKDIR/checkpoints/<step>/`` keeps the last ``keep`` saves; ``WORKDIR/best/<step>/`` keeps the single best
one by the selection metric. With several processes every one of them saves and restores collectively (same calls,
same order); the work directory must be shared (a network file system or a ``gs://`` bucket). A checkpoint restores
onto any mesh: arrays are read with the shardings of the abstract state given to ``restore`` (other process or
device counts, replicated ↔ FSDP). Each holds ``state`` (the TrainState arrays, restored with their shardings) and
``meta`` (JSON: step, epoch, data position, rng, best-so-far, the settings it was trained with). The input pipeline is
a function of (seed, step), so the data position is the step.

Restores are verified: a step that cannot be read (a damaged file, a missing item) or holds a non-finite value is
skipped with a warning naming what was wrong, and the next older step, then ``best/``, is used instead
(``restore_intact``). When training resumes, such a step folder is renamed ``<step>.unreadable`` / ``<step>.nonfinite``
so that the run can save that step again; the damaged files stay there for inspection.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from tpsearch_jax.user_errors import UserError, first_line

__all__ = ["BEST", "CHOICES", "LAST", "Checkpointer", "NoIntactCheckpoint", "PreemptionFlag", "abstract_with_shardings",
           "nonfinite_leaves", "resolve_dir"]

LAST, BEST = "checkpoints", "best"
CHOICES = {"auto": (BEST, LAST), "best": (BEST,), "last": (LAST,)}  # which folders a choice looks in, in order


class NoIntactCheckpoint(UserError):
  """Every checkpoint of a work directory is damaged or non-finite; the message lists each with its problem."""


def resolve_dir(path: str) -> str:
  """Absolute local path; URLs such as gs://bucket/run are returned unchanged."""
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  return x


def _disable_replica_parallel_saves() -> None:
  """Save each array from its first replica (orbax's GPU default) instead of slicing it across replicas.

  Replica-parallel D2H compiles one slicing program per array shape at the first save (≈15 s for the ~400 arrays
  of a train state on 8 CPU devices); the replicated state here is small enough to be written by one replica.
  """
  ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                          override=True)


class Checkpointer:
  """Last-N and best-by-metric checkpoint managers under one work directory."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    _disable_replica_parallel_saves()
    workdir = resolve_dir(workdir)
    self.workdir = workdir

    def manager(sub, max_to_keep):
      # Several processes: every process calls save/restore (each writes its own shards, process 0 the metadata
      # and the JSON). The two managers may save the same step at once, so their barrier names need a prefix.
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
          multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0, barrier_sync_key_prefix=sub))
      return ocp.CheckpointManager(os.path.join(workdir, sub), options=options)

    self._managers = {LAST: manager(LAST, max(int(keep), 1)), BEST: manager(BEST, 1)}

  def directory(self, which: str = LAST, step: int | None = None) -> str:
    """Path of the ``which`` ("checkpoints"|"best") folder, or of one step inside it."""
    path = os.path.join(self.workdir, which)
    return path if step is None else os.path.join(path, str(step))

  def latest_step(self, which: str = LAST) -> int | None:
    """Newest saved step of ``which``, or None."""
    return self._managers[which].latest_step()

  def save(self, step: int, state: Any, meta: dict, which: str = LAST) -> None:
    """Save ``state`` (pytree of jax.Arrays) and ``meta`` (JSON-able dict) as ``step`` of ``which``."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_jsonable(meta)))
    self._managers[which].save(int(step), args=args, force=True)

  def restore(self, abstract_state: Any, step: int | None = None, which: str = LAST) -> tuple[Any, dict]:
    """(state, meta) of ``step`` (default newest); ``abstract_state`` = tree of ShapeDtypeStruct with shardings."""
    mngr = self._managers[which]
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory(which)}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    restored = mngr.restore(int(step), args=args)
    return restored["state"], dict(restored["meta"])

  def restore_meta(self, step: int, which: str = LAST) -> dict:
    """Only the ``meta`` JSON of ``step`` of ``which`` (no arrays are read)."""
    return dict(self._managers[which].restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def restore_intact(self, abstract_state: Any, folders=(LAST, BEST), *,
                     set_aside: bool = False) -> tuple[Any, dict, str] | None:
    """(state, meta, folder) of the newest step that reads completely and is finite, trying each of ``folders`` in
    turn (its steps newest first); None when they hold no step at all.

    Each step passed over gets a warning naming what was wrong; with ``set_aside`` its folder is renamed
    ``<step>.unreadable`` / ``<step>.nonfinite`` (process 0; the managers then forget it). Raises
    NoIntactCheckpoint when steps exist but none is intact.
    """
    problems = []
    for which in folders:
      for step in sorted(self._managers[which].all_steps(), reverse=True):
        folder = self.directory(which, step)
        try:
          state, meta = self.restore(abstract_state, step, which)
        except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
          problem, suffix = f"unreadable ({first_line(e)})", "unreadable"
        else:
          bad = nonfinite_leaves(state)
          if not bad:
            if problems:
              logging.warning("using %s instead (the newest intact checkpoint)", folder)
            return state, meta, folder
          problem, suffix = f"{len(bad)} non-finite arrays, first {bad[0]}", "nonfinite"
          del state
        logging.warning("checkpoint %s is %s; trying the next older one", folder, problem)
        problems.append(f"{folder}: {problem}")
        if set_aside:
          self._set_aside(which, step, suffix)
    if problems:
      raise NoIntactCheckpoint(f"no intact checkpoint in {self.workdir}: " + "; ".join(problems) +
                               " — move the work directory aside to start afresh")
    return None

  def _set_aside(self, which: str, step: int, suffix: str) -> None:
    folder = self.directory(which, step)
    if jax.process_index() == 0:
      target = f"{folder}.{suffix}"
      n = 1
      while os.path.exists(target):
        target, n = f"{folder}.{suffix}{n}", n + 1
      os.rename(folder, target)
      logging.warning("renamed %s to %s", folder, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"tpsearch_set_aside_{which}_{step}")
    self._managers[which].reload()

  def restore_choice(self, abstract_state: Any, choice: str = "auto") -> tuple[Any, dict, str] | None:
    """(state, meta, folder) of the newest intact save in the folders of ``CHOICES[choice]``, else None."""
    return self.restore_intact(abstract_state, CHOICES[choice])

  def wait(self, which: str | None = None) -> None:
    """Block until pending async saves (of ``which``, default both folders) are written."""
    for name, m in self._managers.items():
      if which in (None, name):
        m.wait_until_finished()

  def close(self) -> None:
    self.wait()
    for m in self._managers.values():
      m.close()


def nonfinite_leaves(tree: Any) -> list[str]:
  """Paths of the floating-point leaves of ``tree`` (jax.Arrays on one mesh, any sharding) holding a NaN or Inf."""
  pairs = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not pairs:
    return []
  sharding = pairs[0][1].sharding
  replicated = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
                if isinstance(sharding, jax.sharding.NamedSharding) else None)
  finite = jax.jit(lambda leaves: jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]),
                   out_shardings=replicated)([x for _, x in pairs])
  return [path for (path, _), ok in zip(pairs, np.asarray(finite)) if not ok]


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """Tree of ShapeDtypeStruct(shape, dtype, sharding) for restoring onto a mesh."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


class PreemptionFlag:
  """Set by SIGTERM; the training loop polls ``.requested``, saves and exits. Use as a context manager."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.requested = True

  def __enter__(self):
    with contextlib.suppress(ValueError):  # not the main thread: no handler, polling still works
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, self._previous)
    return False
