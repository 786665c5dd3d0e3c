"""Minimal reproduction, without this project: a 2-process JAX CPU run hangs when process 0 runs an executable it
read back from the persistent compilation cache.

  python tools/repro_cpu_cache_hang.py            # 3 runs: cold cache, warm cache, warm cache with the cache off

Each run starts 2 processes (2 virtual CPU devices each, gloo collectives, jax.distributed on 127.0.0.1) that run a
jitted data-parallel step 3 times. Run 1 fills the cache (only process 0 writes entries). In run 2 process 0 reads
them back and its first step never completes: both processes wait in gloo collectives until the run's timeout.
Run 3 turns the cache off (jax_enable_compilation_cache=False, what tpsearch_jax.main does in this case) and finishes.
Measured with jax/jaxlib 0.12.1 (docs/known_issues.md): run 2 hung in 3 of 3 tries; process 1 alone reading the
cache (process 0 compiling) finished, and per-process cache folders hang too (process 0 still reads its own).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

TIMEOUT_S = 90
WORKER = r"""
import os, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
jax.config.update("jax_cpu_collectives_implementation", "gloo")
if os.environ.get("CACHE_OFF"):
  jax.config.update("jax_enable_compilation_cache", False)
jax.distributed.initialize(os.environ["ADDR"], num_processes=2, process_id=int(sys.argv[1]))
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
w = jax.device_put(jnp.ones((64, 64)), NamedSharding(mesh, P()))
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), np.ones((4, 64), np.float32))
step = jax.jit(lambda w, x: w - 0.1 * jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w))
for i in range(3):
  w = step(w, x)
  print("step", i, float(w[0, 0]), flush=True)
print("done", flush=True)
"""


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(cache: str, label: str, cache_off: bool = False) -> bool:
  """Starts both processes; → whether both printed "done" within TIMEOUT_S."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             ADDR=f"127.0.0.1:{_port()}", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if cache_off:
    env["CACHE_OFF"] = "1"
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  done = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=TIMEOUT_S)
      done.append("done" in out)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      done.append(False)
  ok = all(done)
  print(f"{label}: {'finished' if ok else f'HUNG (killed after {TIMEOUT_S} s)'}", flush=True)
  return ok


def main() -> int:
  with tempfile.TemporaryDirectory() as cache:
    cold = run(cache, "run 1, cold cache")
    warm = run(cache, "run 2, warm cache (process 0 reads its own entries)")
    off = run(cache, "run 3, warm cache turned off", cache_off=True)
  print("reproduced" if cold and not warm and off else "not reproduced")
  return 0 if cold and not warm and off else 1


if __name__ == "__main__":
  sys.exit(main())
