"""Side-by-side CPU benchmark against the PyTorch reference code, in one invocation.

    .venv/bin/python benchmarks/peer_pytorch.py --irra_src ~/src/IRRA --fmfa_src ~/src/FMFA \
        --torch_python ~/torchvenv/bin/python --dims demo --methods irra,fmfa

The reference checkouts (anosorae/IRRA, yinhao1102/FMFA) and an environment with torch are the user's: nothing is
downloaded or committed. Per method, one worker process per side stays alive (``peer_torch_worker.py`` runs the
reference training step, ``peer_jax_worker.py`` the project's, once per MLM head); after each side's warm-up the
driver alternates them ``--rounds`` times, each timing ``--steps`` steps while the others wait, and prints each side's
median and spread of ms/step and the speed ratio (reference time / ours), and the same for the process CPU time
(all threads; less sensitive than wall time to a busy machine). ``--baseline_src DIR`` adds the same sides
from another tree of the project (e.g. the last commit, ``git archive HEAD | tar -x -C DIR``) as ``base/<head>``: a
before/after under the same load. Dimensions: ``demo`` = the towers of ``configs/synthetic.py``; ``small`` / ``full`` =
the ``tpsearch_jax.benchmark`` presets; heads = width / 64 on both sides (the reference's rule); float32; random
initialisation; a fixed random batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from tpsearch_jax.bench.presets import PRESETS
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.configs import base as base_config

HERE = os.path.dirname(os.path.abspath(__file__))


def dims(name: str, batch_size: int | None) -> dict:
  """The model and batch dimensions of ``name`` ("demo" | "small" | "full")."""
  if name == "demo":
    c = load_config_module(os.path.join(HERE, os.pardir, "configs", "synthetic.py")).get_config("irra")
    clip, batch, classes, cross = dict(c.model.clip), int(c.train.batch_size), 200, int(c.model.cross_layers)
  else:
    preset = PRESETS[name]
    base = base_config.get_config("irra")
    clip = dict(base.model.clip, **(preset.clip or {}))
    batch, classes, cross = preset.batch_size, preset.num_classes, int(base.model.cross_layers)
  keys = ("embed_dim", "patch_size", "vision_width", "vision_layers", "context_length", "vocab_size", "text_width",
          "text_layers")
  out = {k: int(clip[k]) for k in keys}
  out.update(image_size=[int(x) for x in clip["image_size"]], batch_size=batch_size or batch, num_classes=classes,
             cross_layers=cross)
  return out


class Worker:
  """One side: a process that builds its step, prints READY, then times ``RUN n`` requests."""

  def __init__(self, name: str, argv: list[str], env: dict | None = None):
    self.name = name
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._expect("READY")
    self.times: list[float] = []
    self.cpu_times: list[float] = []

  def _expect(self, tag: str) -> dict:
    for line in self.proc.stdout:
      if line.startswith(tag + " "):
        return json.loads(line[len(tag) + 1:])
    raise RuntimeError(f"{self.name}: worker exited with {self.proc.wait()} before {tag}")

  def run(self, steps: int) -> float:
    self.proc.stdin.write(f"RUN {steps}\n")
    self.proc.stdin.flush()
    timing = self._expect("TIME")
    self.times.append(timing["ms_per_step"])
    self.cpu_times.append(timing.get("cpu_ms_per_step", float("nan")))
    return timing["ms_per_step"]

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.write("QUIT\n")
      self.proc.stdin.flush()
      self.proc.wait(timeout=60)


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--irra_src", help="a checkout of anosorae/IRRA")
  p.add_argument("--fmfa_src", help="a checkout of yinhao1102/FMFA")
  p.add_argument("--torch_python", required=True, help="python of an environment with torch")
  p.add_argument("--methods", default="irra,fmfa")
  p.add_argument("--dims", default="demo", choices=["demo", "small", "full"])
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--mlm_heads", default="masked,full", help="project sides to time, by MLM head")
  p.add_argument("--baseline_src", help="another tree of this project (e.g. `git archive HEAD`) timed beside this one, "
                                        "as base/<head> sides")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--out", help="write the results as JSON")
  a = p.parse_args(argv)
  d = dims(a.dims, a.batch_size)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as the reference uses one process
  results = {"dims": d, "host": f"{_cpu()}, {os.cpu_count()} logical cores", "python": platform.python_version(),
             "load_average_start": os.getloadavg(), "methods": {}, "load_average": {}}
  for method in a.methods.split(","):
    src = a.irra_src if method == "irra" else a.fmfa_src
    if not src:
      p.error(f"--{method}_src is needed for method {method}")
    workers = [Worker("pytorch", [a.torch_python, os.path.join(HERE, "peer_torch_worker.py"), "--src", src,
                                  "--method", method, "--dims", json.dumps(d)])]
    trees = [("jax", os.path.join(HERE, os.pardir), env)]
    if a.baseline_src:
      trees.append(("base", a.baseline_src, dict(env, PYTHONPATH=os.path.abspath(a.baseline_src))))
    for side, tree, side_env in trees:
      for head in a.mlm_heads.split(","):
        workers.append(Worker(f"{side}/{head}", [sys.executable, os.path.join(tree, "benchmarks", "peer_jax_worker.py"),
                                                 "--method", method, "--dims", json.dumps(d), "--mlm_head", head],
                              side_env))
    try:
      for w in workers:  # warm-up window
        w.run(1)
        w.times.clear()
        w.cpu_times.clear()
      for r in range(a.rounds):
        for w in workers[r % len(workers):] + workers[:r % len(workers)]:
          w.run(a.steps)
    finally:
      for w in workers:
        w.close()
    ref, ref_cpu = statistics.median(workers[0].times), statistics.median(workers[0].cpu_times)
    rows = {}
    for w in workers:
      med, cpu = statistics.median(w.times), statistics.median(w.cpu_times)
      rows[w.name] = {"info": w.info, "ms_per_step": w.times, "median_ms": med, "speedup_vs_pytorch": ref / med,
                      "cpu_ms_per_step": w.cpu_times, "median_cpu_ms": cpu, "cpu_speedup_vs_pytorch": ref_cpu / cpu}
      print(f"{method:<5} {w.name:<12} median {med:9.1f} ms/step  [{', '.join(f'{t:.0f}' for t in w.times)}]  "
            f"×{ref / med:.2f} vs PyTorch; CPU time {cpu:.0f} ms/step ×{ref_cpu / cpu:.2f}  "
            f"({w.info.get('params'):,} params)", flush=True)
    results["methods"][method] = rows
    results["load_average"][method] = os.getloadavg()
  results["load_average_end"] = os.getloadavg()
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
