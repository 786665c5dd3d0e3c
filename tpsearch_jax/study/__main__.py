"""``python -m tpsearch_jax.study --config=configs/study_synthetic.py[:size] --out=DIR [--summary_only]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import jax

from absl import logging as absl_logging

from tpsearch_jax.config_files import load_config
from tpsearch_jax.study.runner import run_study
from tpsearch_jax.study.summary import summarize


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m tpsearch_jax.study", description=__doc__)
  ap.add_argument("--config", required=True, help="study config file, optionally :argument (e.g. :accelerator)")
  ap.add_argument("--out", required=True, help="folder of the runs (OUT/<method>/seed<k>) and the summary")
  ap.add_argument("--summary_only", action="store_true", help="write the summary of the finished runs, train none")
  ap.add_argument("--only", default="", help="comma-separated methods to run (default: all of the config)")
  ap.add_argument("--seeds", default="", help="comma-separated seeds (default: the config's)")
  args = ap.parse_args(argv)
  study = load_config(args.config)
  if args.seeds:
    study.seeds = tuple(int(v) for v in args.seeds.split(","))
  if args.only:
    only = [m for m in args.only.split(",") if m]
    unknown = sorted(set(only) - set(study.methods))
    if unknown:
      ap.error(f"--only: {', '.join(unknown)} not in the study (methods: {', '.join(study.methods)})")
    study.methods = tuple(m for m in study.methods if m in only)
  absl_logging.set_verbosity(absl_logging.WARNING)
  # The seeds of one method compile the same programs: a persistent cache compiles them once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(args.out), ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  if not args.summary_only:
    run_study(study, args.out)
  table = summarize(study, args.out)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
