"""Entry point: ``python -m tpsearch_jax.main --config=configs/cuhk.py:irra --workdir=DIR [--mode=train|eval]``."""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from tpsearch_jax.training import eval_only, trainer

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.", required=True)
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from --workdir) or eval only.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cuhk.py:irra.", lock_config=True)


def _maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when launched as one of several processes.

  Triggers: TPSEARCH_DISTRIBUTED=1 (the launch/ scripts; cluster auto-detection), JAX_COORDINATOR_ADDRESS (+
  JAX_NUM_PROCESSES, JAX_PROCESS_ID), or a multi-task SLURM / Open MPI job, or a multi-host TPU slice.
  """
  if os.environ.get("TPSEARCH_DISTRIBUTED") == "1" and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    n, i = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(n) if n else None, process_id=int(i) if i else None)
  elif any(int(os.environ.get(k, "1") or 1) > 1 for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")) or \
      "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()  # cluster auto-detection


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _maybe_initialize_distributed()
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend())
  if FLAGS.mode == "eval":
    eval_only.evaluate_only(FLAGS.config, FLAGS.workdir)
    return 0
  result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  return 143 if result.get("preempted") else 0


if __name__ == "__main__":
  app.run(main)
