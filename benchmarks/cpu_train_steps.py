"""CPU train-step speed of a config with glibc's default malloc and with GLIBC_TUNABLES, side by side.

Each variant runs in its own process (the tunables are read at process start): build the run's setup, compile and
take ``--warmup`` steps, then time ``--steps`` steps on the real input pipeline and report steps/s, user and system
CPU seconds and minor page faults of the timed window. Run (the Makefile's value for the demo):

  .venv/bin/python benchmarks/cpu_train_steps.py --config=configs/synthetic.py:demo \
      --tunables="$(sed -n 's/^CPU_TRAIN_MALLOC ?= //p' Makefile)"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import jax

from tpsearch_jax import sharding as shd
from tpsearch_jax.config_files import load_config
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.config_checks import resolve_config
from tpsearch_jax.training.setup import build_setup, initial_state


def measure(config_arg: str, warmup: int, steps: int) -> dict:
  """Times ``steps`` train steps of ``config_arg`` ("file.py:arg") in this process -> a result row."""
  config = load_config(config_arg)
  with tempfile.TemporaryDirectory() as workdir:
    s = build_setup(resolve_config(config), train=True)
    train_step = state_lib.make_train_step(s.options.loss, s.model, s.tx, s.mesh, s.shardings)
    state = initial_state(s)
    batches = shd.prefetch_to_mesh(s.train_data.iterator(0), s.mesh, int(config.train.prefetch))
    metrics = None
    for _ in range(warmup):
      state, metrics = train_step.jitted(state, next(batches))
    jax.block_until_ready(metrics)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
      state, metrics = train_step.jitted(state, next(batches))
    jax.block_until_ready(metrics)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
  return {"tunables": os.environ.get("GLIBC_TUNABLES", ""), "steps": steps, "steps_per_sec": steps / seconds,
          "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
          "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_mb": after.ru_maxrss / 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/synthetic.py:demo")
  parser.add_argument("--tunables", required=True, help="the GLIBC_TUNABLES value to compare with the default")
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.config, args.warmup, args.steps)))
    return
  rows = []
  for tunables in ("", args.tunables, "", args.tunables):  # alternated, so drift in machine load shows
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({"JAX_PLATFORMS": "cpu", **({"GLIBC_TUNABLES": tunables} if tunables else {})})
    command = [sys.executable, __file__, "--child", f"--config={args.config}", f"--warmup={args.warmup}",
               f"--steps={args.steps}", f"--tunables={args.tunables}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
      sys.exit(f"the {tunables or 'default'} run failed:\n{out.stderr[-3000:]}")
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r = rows[-1]
    print(f"{r['tunables'] or 'default malloc':<40.40} {r['steps_per_sec']:5.2f} steps/s  user {r['user_s']:6.1f} s  "
          f"sys {r['sys_s']:5.1f} s  minor faults {r['minor_faults']:>10,}  peak RSS {r['peak_rss_mb']:,.0f} MB",
          flush=True)
  base, tuned = (sum(r["steps_per_sec"] for r in rows[i::2]) / 2 for i in (0, 1))
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}: "
        f"tuned / default = {tuned / base:.2f}× ({args.config}, {args.steps} steps after {args.warmup})")


if __name__ == "__main__":
  main()
