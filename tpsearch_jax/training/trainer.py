"""The training loop: epochs, CLU writers, preemption, the evaluation schedule, checkpoint selection, results.json.

``train_and_evaluate(config, workdir)`` trains with periodic evaluation on ``config.eval.select_on``, keeps the last
N checkpoints and the best one, resumes from ``workdir`` automatically, and ends with an evaluation of the selected
checkpoint written to ``workdir/results.json``. The state, step and optimizer come from the TF-free library
(``training.state``, ``training.optim``); the data from ``data.pipeline``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from tpsearch_jax import evaluate as eval_lib
from tpsearch_jax import sharding as shd
from tpsearch_jax.user_errors import UserError, first_line
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import optim, resume_checks, runs
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.progress import Progress
from tpsearch_jax.training.watchdog import Watchdog, resolve_timeout
from tpsearch_jax.training.config_checks import resolve_config
from tpsearch_jax.training.setup import Setup, build_setup, initial_state, write_config


class NonFiniteLossError(FloatingPointError):
  """A step produced a non-finite loss term, gradient or parameter; the message names the step and the first one.

  Raised at the host sync before any checkpoint of that step (or a later one) is written, so the newest checkpoint
  on disk is always finite."""


# Raised by every process at the same point (they follow replicated values), so the processes can still finish their
# collective work (pending checkpoint writes) together. Any other error stops only the process that raised it.
COLLECTIVE_ERRORS = (NonFiniteLossError, eval_lib.MetricsError)

_CHECK_ORDER = ("loss", "grad_norm", "param_norm")  # after the loss terms: what the first bad term leads to


def first_nonfinite(metrics: Mapping[str, float]) -> str:
  """Name of the first non-finite value of one step's metrics: a loss term, else "loss", "grad_norm", "param_norm"."""
  terms = [k for k in metrics if k not in (*_CHECK_ORDER, "finite")]
  return next((k for k in (*terms, *_CHECK_ORDER) if k in metrics and not np.isfinite(metrics[k])), "loss")


def nonfinite_message(step: int, metrics: Mapping[str, float]) -> str:
  """The one-line NaN stop: step, first non-finite value, every value, what the rerun does."""
  bad = first_nonfinite(metrics)
  values = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items() if k != "finite")
  what = {"grad_norm": "the loss is finite but its gradient is not",
          "param_norm": "the loss and gradient are finite but the updated parameters are not"}.get(bad, "")
  return (f"non-finite {bad} at step {step}{' (' + what + ')' if what else ''}; nothing from this step on was "
          f"saved, so rerunning resumes from the last finite checkpoint — lower optim.lr (or set "
          f"optim.grad_clip_norm) and add --config.train.allow_config_change=True; values: {values}")


def summarize_train_metrics(pending: Sequence[tuple[int, Mapping[str, jax.Array]]]) -> dict[str, float]:
  """[(step, metrics)] since the last log → mean per key; raises NonFiniteLossError at the first bad step."""
  host = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, host):
    if not bool(m["finite"]):
      raise NonFiniteLossError(nonfinite_message(step, {k: float(v) for k, v in m.items()}))
  keys = [k for k in host[0] if k != "finite"]
  return {k: float(np.mean([float(m[k]) for m in host])) for k in keys}


def _flatten(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       callbacks: Sequence[Callable[[int], None]] = (),
                       devices: Sequence[jax.Device] | None = None) -> dict:
  """Trains (resuming from ``workdir``), evaluates, writes ``workdir/results.json``; returns its payload.

  callbacks: called with the step number after every train step (e.g. extra periodic actions).
  devices: what ``config.mesh`` lays out (default: every device of every process); e.g. ``jax.devices()[:1]`` trains
  a small model on one device of a host with several, where splitting its steps would cost more than it gains.
  Returns {"preempted": True, "step": n} without the final evaluation when stopped by SIGTERM.
  """
  workdir = ckpt_lib.resolve_dir(workdir)
  config = resolve_config(config)
  resume_checks.check_run_identity(config, workdir)  # before anything is written
  s = build_setup(config, train=True, devices=devices)  # the input pipeline hides the GPUs from TF before CLU starts it
  for note in ckpt_lib.quarantined(workdir):
    logging.warning("quarantined: %s", note)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(s.config.train.keep_checkpoints),
                                       async_save=bool(s.config.train.async_checkpointing))
  writer = None
  alone = False  # an error on this process only: the others will not join collective checkpoint work
  watchdog = Watchdog(resolve_timeout(s.config.train.stall_timeout_s), workdir, jax.process_index(),
                      adaptive=float(s.config.train.stall_timeout_s) < 0)
  try:
    with watchdog:
      state, step, best = _restore_or_init(s, checkpointer)
      writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
      if step == 0:
        writer.write_hparams(_flatten(s.config.to_dict()))
      state, step, preempted = _train_loop(s, workdir, writer, checkpointer, state, step, best, callbacks,
                                           watchdog.beat)
      if preempted:
        return {"preempted": True, "step": step}
      checkpointer.wait()
      payload = _final_evaluation(s, writer, checkpointer, state, step)
      eval_lib.report(workdir, payload)
      return payload
  except BaseException as e:
    alone = jax.process_count() > 1 and not isinstance(e, COLLECTIVE_ERRORS)
    raise
  finally:  # also on errors (non-finite loss, …): pending checkpoint writes complete, metrics are flushed
    if writer is not None:
      writer.flush()
    if alone:
      logging.error("process %d stops alone: pending checkpoint writes are abandoned (the last complete checkpoint "
                    "stays)", jax.process_index())
    else:
      checkpointer.close()


def _restore_or_init(s: Setup, checkpointer):
  """(state, step, best-so-far) from the newest intact checkpoint in the work directory, or a fresh initialisation."""
  config = s.config
  best = {"split": config.eval.select_on, "metric": "R1", "value": None, "step": None}
  found = checkpointer.restore_intact(s.abstract, (ckpt_lib.LAST, ckpt_lib.BEST), set_aside=True)
  if found is None:
    state = initial_state(s)
    write_config(config, os.path.join(checkpointer.workdir, runs.CONFIG_FILE))  # a run starts
    return state, 0, best
  state, meta, folder = found
  best = meta.get("best", best)
  best_step = checkpointer.latest_step(ckpt_lib.BEST)
  if best_step is not None and best_step != best.get("step"):  # a best saved after the newest last-N checkpoint
    try:
      best = checkpointer.restore_meta(best_step, ckpt_lib.BEST).get("best", best)
    except Exception as e:  # pylint: disable=broad-except  (the final evaluation checks the arrays again)
      logging.warning("cannot read the meta of %s (%s); best so far from %s", checkpointer.directory(
          ckpt_lib.BEST, best_step), first_line(e), folder)
  step = int(meta["step"])
  if meta.get("steps_per_epoch") not in (None, s.steps_per_epoch):
    raise UserError(f"{folder} was written with {meta['steps_per_epoch']} steps per epoch, the current data and "
                    f"batch size give {s.steps_per_epoch}: resuming would change the schedule")
  resume_checks.check_settings(meta.get("settings"), resume_checks.settings(config), folder,
                               allow=bool(config.train.allow_config_change))
  write_config(config, os.path.join(checkpointer.workdir, runs.CONFIG_FILE))  # a run resumes
  logging.info("Resumed from %s at step %d (epoch %d); best so far %s", folder, step, step // s.steps_per_epoch, best)
  return state, step, best


def _train_loop(s: Setup, workdir, writer, checkpointer, state, step: int, best: dict, callbacks,
                beat: Callable[..., None] = lambda *a: None):
  """Runs steps ``step``..stop with logging, per-epoch selection, checkpoints; → (state, step, preempted).

  ``beat(step, what)`` is called whenever a step is known to have finished (host sync), an evaluation or a save.
  """
  config, mesh = s.config, s.mesh
  select_on = config.eval.select_on
  total_steps = int(config.schedule.num_epochs) * s.steps_per_epoch
  stop_step = min(total_steps, int(config.train.num_steps)) if config.train.num_steps > 0 else total_steps
  logging.info("%d train captions (%d skipped), %d steps/epoch, training steps %d..%d of %d",
               s.train_data.num_examples, s.train_data.num_skipped, s.steps_per_epoch, step, stop_step, total_steps)
  train_step = state_lib.make_train_step(s.options.loss, s.model, s.tx, mesh, s.shardings)
  schedule = optim.make_schedule(s.options.optim, s.options.schedule, s.steps_per_epoch)
  log_every = max(int(config.train.log_every_steps), 1)
  ckpt_every = int(config.train.checkpoint_every_steps) or s.steps_per_epoch
  eval_every = int(config.eval.every_epochs)
  hooks = []
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  pending: list[tuple[int, Any]] = []
  progress = Progress(step, stop_step)

  def meta(at_step):
    return {"step": at_step, "epoch": at_step // s.steps_per_epoch, "data_position": at_step,
            "steps_per_epoch": s.steps_per_epoch, "seed": int(config.seed), "best": best,
            "settings": resume_checks.settings(config)}

  def flush(at_step):
    """Host sync: averaged train metrics and wall-time progress to the writer; raises NonFiniteLossError before
    anything is saved."""
    if pending:
      summary = summarize_train_metrics(pending)
      summary["lr"] = float(schedule(at_step - 1))
      speed = progress.report(at_step)
      summary.update(steps_per_sec=speed["steps_per_sec"])
      writer.write_scalars(at_step, {f"train/{k}": v for k, v in summary.items()})
      logging.info("%s; loss %.4f", progress.line(at_step, speed), summary["loss"])
      pending.clear()
      beat(at_step, "train step")

  def save(at_step, which=ckpt_lib.LAST):
    with progress.paused():
      checkpointer.save(at_step, state, meta(at_step), which)
      if which == ckpt_lib.BEST:  # written before any later checkpoint that records it as the best can exist, so a
        checkpointer.wait(ckpt_lib.BEST)  # run killed at any moment resumes with its best on disk
    beat(at_step, "checkpoint save")

  def preemption_requested(flag, at_step) -> bool:
    if jax.process_count() == 1:
      return flag.requested
    if at_step % log_every:  # hosts agree at log steps only (one collective)
      return False
    return bool(multihost_utils.process_allgather(np.asarray(flag.requested)).any())

  _log_data_slice(s.train_data, step)
  batches = shd.prefetch_to_mesh(s.train_data.iterator(step), mesh, int(config.train.prefetch))
  last_saved = step if checkpointer.latest_step() == step else None
  with ckpt_lib.PreemptionFlag() as flag:
    while step < stop_step:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        try:
          batch = next(batches)
        except StopIteration:
          raise RuntimeError(f"the train iterator ended at step {step}; it must be infinite") from None
        state, metrics = train_step.jitted(state, batch)
      step += 1
      pending.append((step, metrics))
      for h in hooks:
        h(step)
      for cb in callbacks:
        cb(step)
      epoch = step // s.steps_per_epoch
      if step % log_every == 0 or step == stop_step:
        flush(step)
      if select_on != "none" and eval_every > 0 and step % s.steps_per_epoch == 0 and epoch % eval_every == 0:
        flush(step)
        with progress.paused():
          row = s.evaluate(state.params, [select_on], step, "current", epoch)[select_on]
        beat(step, "evaluation")
        writer.write_scalars(step, {f"eval/{select_on}/{k}": row[k] for k in eval_lib.METRIC_KEYS})
        if best["value"] is None or row["R1"] > best["value"]:
          best.update(value=row["R1"], step=step, epoch=epoch)
          save(step, ckpt_lib.BEST)
          logging.info("New best %s R1 %.3f at step %d", select_on, row["R1"], step)
      if step % ckpt_every == 0 or step == stop_step:
        flush(step)
        save(step)
        last_saved = step
      if preemption_requested(flag, step):
        flush(step)
        if last_saved != step:
          save(step)
        logging.warning("Stopped by SIGTERM at step %d; checkpoint saved in %s. Rerun the same command to resume.",
                        step, checkpointer.directory())
        return state, step, True
  flush(step)
  if last_saved != step:
    save(step)
  return state, step, False


def _log_data_slice(data, step: int) -> None:
  """One line per process: which rows of every global batch it reads, and the examples of the first batch."""
  lo = data.process_index * data.local_batch_size
  logging.info("process %d/%d reads rows %d:%d of every global batch of %d; step %d examples: %s",
               jax.process_index(), jax.process_count(), lo, lo + data.local_batch_size, data.global_batch_size, step,
               data.local_indices(step).tolist())


def _final_evaluation(s: Setup, writer, checkpointer, state, step: int) -> dict:
  """The selected checkpoint (best on config.eval.select_on, else the last state) on every config.eval.splits;
  when the best is not the last state, the last state too (under "last")."""
  config = s.config
  splits = config.eval.splits
  best_step = checkpointer.latest_step(ckpt_lib.BEST) if config.eval.select_on != "none" else None
  last_rows = None
  best_state = None
  if best_step is not None and best_step != step:
    try:
      best_state, best_meta, _ = checkpointer.restore_intact(s.abstract, (ckpt_lib.BEST,), set_aside=True)
      best_step = int(best_meta["step"])
    except ckpt_lib.NoIntactCheckpoint as e:
      logging.warning("%s; evaluating the last state instead of the best", e)
      best_step = None
  if best_state is not None:
    rows = s.evaluate(best_state.params, splits, best_step, checkpointer.directory(ckpt_lib.BEST, best_step))
    del best_state
    last_rows = s.evaluate(state.params, splits, step, checkpointer.directory(ckpt_lib.LAST, step))
  else:
    where = ckpt_lib.BEST if best_step == step else ckpt_lib.LAST
    rows = s.evaluate(state.params, splits, step, checkpointer.directory(where, step))
  for name, row in rows.items():
    writer.write_scalars(step, {f"final/{name}/{k}": row[k] for k in eval_lib.METRIC_KEYS})
  return eval_lib.results_payload(config, rows, last_rows) | {"skipped": s.skipped(splits)}
