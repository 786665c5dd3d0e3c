"""Study runs: the config of (method, seed) from the study config, and the resumable loop over all of them.

A study config (``configs/study_synthetic.py``) names a dataset config file (``base_config``), the overrides every
run gets (``overrides``), the ``methods`` (a preset name, or a variant: (name, preset, overrides) in ``variants``)
and the ``seeds``. Each run is a normal work directory ``OUT/<method>/seed<k>`` trained by
``training.trainer.train_and_evaluate``; one with a results.json is finished and skipped, an interrupted one resumes
from its checkpoint. ``study_run.json`` beside it records the wall time, load and versions.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.configs import base
from tpsearch_jax.evaluate import RESULTS_FILE

RUN_FILE = "study_run.json"


def variants(study) -> dict[str, tuple[str, dict]]:
  """{method name: (preset, {"section.field": value})} of every method of ``study``."""
  table = {name: (preset, dict(over)) for name, preset, over in study.variants}
  return {m: table.get(m, (m, {})) for m in study.methods}


def run_config(study, method: str, seed: int) -> ml_collections.ConfigDict:
  """The training config of run (``method``, ``seed``): base config of the preset + study and variant overrides."""
  table = variants(study)
  if method not in table:
    raise ValueError(f"method {method!r} is not in the study (methods: {', '.join(study.methods)})")
  preset, over = table[method]
  c = load_config_module(study.base_config).get_config(preset)
  base.apply_overrides(c, dict(study.overrides), "study overrides")
  base.apply_overrides(c, over, f"study variant {method}")
  c.seed = int(seed)
  return c


def run_dir(out: str, method: str, seed: int) -> str:
  return os.path.join(out, method, f"seed{seed}")


def is_finished(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, RESULTS_FILE))


def run_study(study, out: str, devices: Sequence[jax.Device] | None = None) -> list[dict]:
  """Trains every unfinished (method, seed) of ``study`` under ``out`` → [{"method", "seed", "status"}].

  devices: what each run trains on (``trainer.train_and_evaluate``'s; default: every device)."""
  from tpsearch_jax.training import trainer  # TF-side import, only when something trains

  done = []
  for seed in study.seeds:  # seed-major: a study cut short still has every method at its first seeds
    for method in study.methods:
      workdir = run_dir(out, method, seed)
      if is_finished(workdir):
        logging.info("study: %s seed %d finished already (%s), skipped", method, seed, workdir)
        done.append({"method": method, "seed": seed, "status": "skipped"})
        continue
      resumed = os.path.isdir(os.path.join(workdir, "checkpoints"))
      load0, t0 = os.getloadavg(), time.time()
      payload = trainer.train_and_evaluate(run_config(study, method, seed), workdir, devices=devices)
      wall = time.time() - t0
      if payload.get("preempted"):
        logging.warning("study: stopped during %s seed %d; rerun to resume", method, seed)
        done.append({"method": method, "seed": seed, "status": "preempted"})
        return done
      record = {"method": method, "seed": int(seed), "wall_s": round(wall, 1), "resumed": resumed,
                "load_avg_start": [round(v, 2) for v in load0], "load_avg_end": [round(v, 2) for v in os.getloadavg()],
                "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "jax": jax.__version__,
                "backend": jax.default_backend(), "devices": len(devices) if devices else jax.device_count(),
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine()}
      with open(os.path.join(workdir, RUN_FILE), "w") as f:
        json.dump(record, f, indent=1)
      test = payload["splits"].get("test", {})
      logging.warning("study: %s seed %d done in %.0f s: test R1 %.2f", method, seed, wall,
                      test.get("R1", float("nan")))
      done.append({"method": method, "seed": seed, "status": "trained"})
  return done
