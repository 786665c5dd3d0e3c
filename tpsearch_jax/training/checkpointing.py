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
(``restore_intact``). When training resumes, such a step folder is moved into ``WORKDIR/quarantine/`` with a note of
why (``<folder>-<step>-<problem>.txt``), never deleted, so that the run can save that step again; start-up lists what
the quarantine holds. A checkpoint whose arrays do not fit the state the current config builds is not damaged: that
is ``StateMismatch``, a one-line refusal that leaves every file as it is.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from tpsearch_jax.user_errors import UserError, first_line

__all__ = ["BEST", "CHOICES", "LAST", "QUARANTINE", "Checkpointer", "NoIntactCheckpoint", "PreemptionFlag",
           "StateMismatch", "abstract_with_shardings", "nonfinite_leaves", "quarantined", "resolve_dir"]

LAST, BEST, QUARANTINE = "checkpoints", "best", "quarantine"
CHOICES = {"auto": (BEST, LAST), "best": (BEST,), "last": (LAST,)}  # which folders a choice looks in, in order


class NoIntactCheckpoint(UserError):
  """Every checkpoint of a work directory is damaged or non-finite; the message lists each with its problem."""


class StateMismatch(UserError):
  """A checkpoint holds arrays of other names or shapes than the state the current config builds."""


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

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, create: bool = True):
    """``create=False``: read only (evaluation, search): no folder is made."""
    _disable_replica_parallel_saves()
    workdir = resolve_dir(workdir)
    self.workdir = workdir

    def manager(sub, max_to_keep):
      # Several processes: every process calls save/restore (each writes its own shards, process 0 the metadata
      # and the JSON). The two managers may save the same step at once, so their barrier names need a prefix.
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save,
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

    Each step passed over gets a warning naming what was wrong; with ``set_aside`` its folder is moved into
    WORKDIR/quarantine/ with a note (process 0; the managers then forget it). Raises NoIntactCheckpoint when steps
    exist but none is intact, StateMismatch (nothing moved) when a step does not fit ``abstract_state``.
    """
    problems = []
    for which in folders:
      for step in sorted(self._managers[which].all_steps(), reverse=True):
        folder = self.directory(which, step)
        try:
          self.check_fits(abstract_state, step, which)
          state, meta = self.restore(abstract_state, step, which)
        except StateMismatch:
          raise
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
          self._set_aside(which, step, suffix, problem)
    if problems:
      raise NoIntactCheckpoint(f"no intact checkpoint in {self.workdir}: " + "; ".join(problems) +
                               f" (damaged steps are kept in {os.path.join(self.workdir, QUARANTINE)}) — use a new --workdir to "
                     "start afresh")
    return None

  def check_fits(self, abstract_state: Any, step: int, which: str = LAST) -> None:
    """Raises StateMismatch when ``step`` holds arrays of other paths or shapes than ``abstract_state``; a step whose
    metadata cannot be read passes (the restore then finds it damaged)."""
    folder = self.directory(which, step)
    try:
      saved = ocp.StandardCheckpointer().metadata(os.path.join(folder, "state"))
    except Exception:  # pylint: disable=broad-except  (damaged: restore_intact reports it)
      return
    saved = getattr(saved, "item_metadata", saved)
    have = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(saved) if hasattr(x, "shape")}
    want = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
    if not have or have == want:
      return
    diff = [f"{k} missing from the checkpoint" for k in sorted(want.keys() - have.keys())]
    diff += [f"{k} not in the current model" for k in sorted(have.keys() - want.keys())]
    diff += [f"{k} saved {have[k]} vs {want[k]} now" for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
    raise StateMismatch(f"{folder} holds a state of another shape than this config builds ({len(diff)} arrays differ, "
                        f"first: {'; '.join(diff[:3])}): it was written with another config. Nothing was changed; "
                        "rerun with the run's own config (WORKDIR/config.json) or use a new --workdir")

  def _set_aside(self, which: str, step: int, suffix: str, why: str) -> None:
    """Moves a damaged step folder into WORKDIR/quarantine/ with a note of why (process 0); never deletes it."""
    folder = self.directory(which, step)
    if jax.process_index() == 0:
      root = os.path.join(self.workdir, QUARANTINE)
      os.makedirs(root, exist_ok=True)
      name, n = f"{which}-{step}-{suffix}", 1
      while os.path.exists(os.path.join(root, name)):
        name, n = f"{which}-{step}-{suffix}-{n}", n + 1
      target = os.path.join(root, name)
      shutil.move(folder, target)
      with open(target + ".txt", "w") as f:
        f.write(f"{folder} moved here {datetime.datetime.now().isoformat(timespec='seconds')}: {why}\n")
      logging.warning("moved %s to %s (%s)", folder, target, why)
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


def _path(path) -> str:
  """"params/clip/text/ln/bias" of a key path, whatever the container (dict, dataclass attribute, tuple index)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def quarantined(workdir: str) -> list[str]:
  """The notes (one line each) of what WORKDIR/quarantine holds, oldest name first."""
  root = os.path.join(resolve_dir(workdir), QUARANTINE)
  if "://" in root or not os.path.isdir(root):
    return []
  notes = []
  for name in sorted(os.listdir(root)):
    if name.endswith(".txt"):
      with open(os.path.join(root, name)) as f:
        notes.append(f.read().strip())
  return notes


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
