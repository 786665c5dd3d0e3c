"""Soak test of the multi-process resume: train → interrupt → resume, many times in a row, on one machine.

  python tools/soak_resume.py --cycles=20 --out=/tmp/soak

Every cycle starts ``python -m tpsearch_jax.main`` as 2 processes (2 virtual CPU devices each, gloo, one shared
persistent compilation cache folder, as on a pod) on a tiny synthetic_pedes run, waits until the run has saved a
checkpoint newer than the one it resumed from, then interrupts it: odd cycles SIGTERM both processes (a preemption:
both save and exit with status 143), even cycles SIGKILL process 1 (a lost host: process 0 stops through the
heartbeat check). A cycle that saves no new checkpoint within ``--cycle_timeout_s`` is a hang: the processes' logs
are printed and the soak fails. Prints one line per cycle and a summary; exit status 0 when every cycle resumed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

from tpsearch_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = dict(num_ids=24, images_per_id=2, image_size=(32, 16), split_fractions=(0.6, 0.2, 0.2))
OVERRIDES = {
    **{f"data.synthetic.{k}": v for k, v in SYNTHETIC.items()}, "data.image_size": (32, 16), "data.context_length": 16,
    "model.clip.embed_dim": 16, "model.clip.vision_width": 32, "model.clip.vision_layers": 1,
    "model.clip.vision_heads": 4, "model.clip.context_length": 16, "model.clip.text_width": 32,
    "model.clip.text_layers": 1, "model.clip.text_heads": 4, "train.batch_size": 8, "eval.batch_size": 8,
    "schedule.num_epochs": 200, "eval.every_epochs": 50, "train.log_every_steps": 2,
    "train.checkpoint_every_steps": 2, "train.keep_checkpoints": 2,
}
CONFIG = """\"\"\"The soak's tiny synthetic_pedes run (tools/soak_resume.py).\"\"\"
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.configs.base import apply_overrides

OVERRIDES = {overrides!r}


def get_config(method="clip"):
  c = load_config_module({base!r}).get_config(method)
  apply_overrides(c, OVERRIDES, "soak_config.py")
  return c
"""


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _start(workdir: str, config: str, cache: str, logs: list[str]) -> list[subprocess.Popen]:
  port = _port()
  procs = []
  for i, log in enumerate(logs):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    with open(log, "w") as out:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "tpsearch_jax.main", f"--config={config}:clip", f"--workdir={workdir}",
           "--heartbeat_timeout_s=10"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
          start_new_session=True))
  return procs


def _kill(procs) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def _tail(path: str, lines: int = 30) -> str:
  with open(path, errors="replace") as f:
    return "\n".join(f.read().splitlines()[-lines:])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cycles", type=int, default=20)
  parser.add_argument("--out", default="/tmp/tpsearch_soak")
  parser.add_argument("--cycle_timeout_s", type=float, default=300)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  workdir, data, cache = (os.path.join(args.out, n) for n in ("run", "data", "xla_cache"))
  synthetic.ensure(data, **SYNTHETIC)  # once, before any process looks for it
  config = os.path.join(args.out, "soak_config.py")
  with open(config, "w") as f:
    f.write(CONFIG.format(overrides=dict(OVERRIDES, **{"data.root": data}),
                          base=os.path.join(REPO, "configs", "synthetic.py")))
  started, resumed_ok = time.monotonic(), 0
  for cycle in range(1, args.cycles + 1):
    before = _steps(workdir)
    logs = [os.path.join(args.out, f"cycle{cycle:02d}.process{i}.log") for i in range(2)]
    t0 = time.monotonic()
    procs = _start(workdir, config, cache, logs)
    target = (before[-1] if before else 0)
    while not [s for s in _steps(workdir) if s > target]:
      if time.monotonic() - t0 > args.cycle_timeout_s or any(p.poll() is not None for p in procs):
        _kill(procs)
        print(f"cycle {cycle}: no checkpoint after step {target} within {time.monotonic() - t0:.0f} s "
              f"(exit codes {[p.returncode for p in procs]}) — HANG or failure", flush=True)
        for log in logs:
          print(f"--- {log}\n{_tail(log)}", flush=True)
        print(f"soak: {resumed_ok}/{cycle - 1} cycles resumed before the failure", flush=True)
        return 1
      time.sleep(0.2)
    text = open(logs[0], errors="replace").read()
    m = re.search(r"Resumed from \S+ at step (\d+)", text)
    if before and not m:
      _kill(procs)
      print(f"cycle {cycle}: started afresh instead of resuming\n{_tail(logs[0])}", flush=True)
      return 1
    how = "SIGTERM both" if cycle % 2 else "SIGKILL process 1"
    if cycle % 2:
      for p in procs:
        os.kill(p.pid, signal.SIGTERM)
    else:
      os.killpg(procs[1].pid, signal.SIGKILL)
    try:
      codes = [p.wait(timeout=args.cycle_timeout_s) for p in procs]
    except subprocess.TimeoutExpired:
      _kill(procs)
      print(f"cycle {cycle}: did not stop within {args.cycle_timeout_s:.0f} s after {how} — HANG", flush=True)
      for log in logs:
        print(f"--- {log}\n{_tail(log)}", flush=True)
      return 1
    resumed_ok += bool(m) or not before
    print(f"cycle {cycle}: resumed at step {m.group(1) if m else 0}, saved up to {_steps(workdir)[-1]}, {how} → "
          f"exit codes {codes}, {time.monotonic() - t0:.0f} s", flush=True)
  print(f"soak: {resumed_ok}/{args.cycles} cycles started or resumed and were interrupted, no hang, "
        f"{time.monotonic() - started:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
