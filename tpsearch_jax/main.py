"""Entry point: ``python -m tpsearch_jax.main --config=configs/cuhk.py:irra --workdir=DIR [--mode=train|eval]``.

Several processes (hosts, or processes on one machine) run the same command; ``jax.distributed`` connects them when
launched as one of several (see ``_distributed_kwargs`` and launch/README.md). A process that dies stops the others:
the coordinator notices its missing heartbeats (``--heartbeat_timeout_s``) and every process exits with "the JAX
distributed service detected fatal errors ... another task died"; an error raised in one process exits it at once
(without the shutdown barrier), which the others see the same way. Rerunning the same command resumes.

A mistake in the input (a config key, a file, a checkpoint) is reported on one line naming what to fix, with exit
status 2 (``user_errors``); ``--verbose`` or ``--pdb`` show the traceback instead. Other statuses: 3 diverged
(non-finite loss, one line), 4 stalled (the watchdog, ``train.stall_timeout_s``), 143 stopped by SIGTERM after
saving, 1 a bug (with its traceback).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from tpsearch_jax import cli_help, config_files, user_errors
from tpsearch_jax.training import eval_only, trainer

FLAGS = flags.FLAGS
PROGRAM = "tpsearch_jax.main"
CONFIG_HELP = ("  --config.SECTION.FIELD=VALUE  override one field of the config, e.g. --config.optim.lr=5e-6 "
               "(fields: tpsearch_jax/configs/base.py)",)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.", required=True)
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from --workdir) or eval only.")
flags.DEFINE_integer("heartbeat_timeout_s", 100, "Several processes: a process silent for this long counts as dead "
                     "and every process stops.")
flags.DEFINE_integer("initialization_timeout_s", 300, "Several processes: how long to wait for all to connect.")
flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs and the traceback of input errors.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cuhk.py:irra.", lock_config=True)


def _distributed_kwargs() -> dict | None:
  """Arguments for jax.distributed.initialize() when launched as one of several processes, else None.

  Triggers: JAX_COORDINATOR_ADDRESS (host:port of process 0, with JAX_NUM_PROCESSES and JAX_PROCESS_ID),
  TPSEARCH_DISTRIBUTED=1 (the launch/ scripts: cluster auto-detection), a multi-task SLURM / Open MPI job, or a
  multi-host TPU slice.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    n, i = env.get("JAX_NUM_PROCESSES"), env.get("JAX_PROCESS_ID")
    return dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(n) if n else None,
                process_id=int(i) if i else None)
  if env.get("TPSEARCH_DISTRIBUTED") == "1":
    return {}
  if any(int(env.get(k, "1") or 1) > 1 for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) or \
      "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return {}  # cluster auto-detection
  return None


def _maybe_initialize_distributed() -> bool:
  """jax.distributed.initialize() when launched as one of several processes; → whether it was."""
  kwargs = _distributed_kwargs()
  if kwargs is None:
    return False
  if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu" and \
      jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo (TCP)
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s,
                             initialization_timeout=FLAGS.initialization_timeout_s)
  _no_persistent_cache_on_multiprocess_cpu()
  logging.info("jax.distributed: process %d of %d (coordinator %s); a process silent for %d s stops all of them; "
               "rerun the same command to resume", jax.process_index(), jax.process_count(),
               kwargs.get("coordinator_address", "auto-detected"), FLAGS.heartbeat_timeout_s)
  return True


def _no_persistent_cache_on_multiprocess_cpu() -> None:
  """Turns JAX's persistent compilation cache off in a multi-process CPU run (before anything is compiled).

  With jaxlib 0.12 on CPU (gloo collectives), process 0 running an executable it read back from the persistent cache
  never completes its first cross-process collective: every rerun that finds a warm cache hangs (process 1 reading
  the same entries is fine, and per-process cache folders do not help, since only process 0 writes entries).
  tools/repro_cpu_cache_hang.py reproduces it without this project; docs/known_issues.md has the details.
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu" and jax.config.jax_enable_compilation_cache and \
      (jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    jax.config.update("jax_enable_compilation_cache", False)
    logging.warning("persistent compilation cache (%s) turned off: a multi-process CPU run hangs on executables read "
                    "back from it (docs/known_issues.md)",
                    jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"))


def _run() -> int:
  workdir = FLAGS.workdir
  if "://" not in workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise user_errors.UserError(f"--workdir={workdir} is a file, not a folder: pass a new or existing run folder")
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend())
  if FLAGS.mode == "eval":  # without --config: the run's own config.json
    eval_only.evaluate_only(FLAGS.config, FLAGS.workdir)
    return 0
  if FLAGS.config is None:
    raise user_errors.UserError("--config is required for training, e.g. --config=configs/cuhk.py:irra (to resume a "
                                "run, pass the config it was started with)")
  result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  return user_errors.PREEMPTED_STATUS if result.get("preempted") else 0


def _run_or_diverged(verbose: bool) -> int:
  """``_run``; a diverged run (non-finite loss, raised by every process at the same step) → one line, status 3."""
  try:
    return _run()
  except trainer.NonFiniteLossError as e:
    if verbose:
      raise
    logging.error("process %d/%d: %s", jax.process_index(), jax.process_count(), e)
    if jax.process_index() == 0:
      print(f"{PROGRAM}: diverged: {e}", file=sys.stderr, flush=True)
    return user_errors.DIVERGED_STATUS


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  verbose = FLAGS.verbose or FLAGS.pdb_post_mortem
  cli_help.quiet_libraries(FLAGS.verbose)
  if not _maybe_initialize_distributed() or jax.process_count() == 1:
    status = user_errors.exit_on_user_error(lambda: _run_or_diverged(verbose), program=PROGRAM, verbose=verbose)
    logging.flush()
    user_errors.exit_process(status)
  try:
    return _run_or_diverged(verbose)
  except trainer.COLLECTIVE_ERRORS:
    raise  # every process raised it: they leave through the shutdown barrier together
  except BaseException as e:  # pylint: disable=broad-except
    # Only this process failed. The normal exit waits at the shutdown barrier for the others, which wait for this
    # one in their next collective: exit now, so the coordinator sees this process gone and stops the others.
    user_error = isinstance(e, user_errors.USER_FACING)
    detail = "" if user_error and not verbose else "\n" + "".join(traceback.format_exception(e))
    logging.error("process %d/%d failed: %s%s", jax.process_index(), jax.process_count(), e, detail)
    logging.error("exiting process %d without the shutdown barrier: the other processes stop within the heartbeat "
                  "timeout (%d s); rerun the same command to resume", jax.process_index(), FLAGS.heartbeat_timeout_s)
    if user_error:
      print(f"{PROGRAM}: error (process {jax.process_index()}): {e}", file=sys.stderr)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2 if user_error else 130 if isinstance(e, KeyboardInterrupt) else 1)


def cli() -> None:
  """``python -m tpsearch_jax.main``: the config flags are checked (one line on a mistake) before absl parses them.

  ``kill -USR1 <pid>`` writes every thread's Python stack to stderr (a look into a slow or stuck process)."""
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  if cli_help.wants_help(sys.argv):
    cli_help.exit_with_help(cli_help.help_text(__doc__.split("\n\n")[0], PROGRAM, extra=CONFIG_HELP))
  code = user_errors.exit_on_user_error(lambda: config_files.check_config_flags(sys.argv[1:]) or 0, program=PROGRAM,
                                        verbose="--verbose" in sys.argv or "--pdb" in sys.argv)
  if code:
    user_errors.exit_process(code)
  app.run(main)


if __name__ == "__main__":
  cli()
