"""How runs end: the stall watchdog (stacks + one line + status 4) and the one-line diverged stop (status 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from tpsearch_jax import user_errors
from tpsearch_jax.training import watchdog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_watchdog_writes_every_stack_and_exits_with_the_stalled_status(tmp_path):
  """A process whose main thread stops making progress after step 7 (here: sleeping, as in a collective that never
  completes) is ended by the watchdog: its stacks in WORKDIR/stall_0.txt, one line naming step 7, status 4."""
  script = textwrap.dedent(f"""
      import threading, time
      from tpsearch_jax.training.watchdog import Watchdog
      def waiting_in_a_collective():
        time.sleep(120)
      def helper_thread():
        time.sleep(120)
      threading.Thread(target=helper_thread, name="prefetch", daemon=True).start()
      with Watchdog(1.0, {str(tmp_path)!r}, 0, poll_s=0.05) as w:
        w.beat(7, "train step")
        waiting_in_a_collective()
  """)
  started = time.monotonic()
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == user_errors.STALLED_STATUS == watchdog.STALLED_STATUS, out.stderr[-2000:]
  assert time.monotonic() - started < 60  # not the 120 s sleep
  lines = [line for line in out.stderr.splitlines() if line.startswith("tpsearch_jax.main: error")]
  assert len(lines) == 1 and "stalled: nothing finished for" in lines[0], out.stderr[-2000:]
  assert "last finished step: 7 (after the train step)" in lines[0] and "stall_0.txt" in lines[0]
  stacks = (tmp_path / "stall_0.txt").read_text()
  assert "waiting_in_a_collective" in stacks and "helper_thread" in stacks  # every thread, not only the main one
  assert stacks.splitlines()[0] == lines[0].split("(process 0): ", 1)[1]


def test_watchdog_limit_adapts_to_the_longest_gap_and_zero_is_off(tmp_path):
  w = watchdog.Watchdog(10.0, str(tmp_path), adaptive=True)
  w._last -= 50.0  # a 50 s gap (a long compile) ends with this beat
  w.beat(1)
  assert abs(w.limit_s - watchdog.ADAPTIVE_FACTOR * 50.0) < 1.0 and w.limit_s > 10.0
  fixed = watchdog.Watchdog(10.0, str(tmp_path))
  assert fixed.limit_s == watchdog.DEFAULT_TIMEOUT_S  # start-up (the first compile) is not held to 10 s
  fixed._last -= 50.0
  fixed.beat(1)
  assert fixed.limit_s == 10.0
  assert watchdog.Watchdog(4000.0, str(tmp_path)).limit_s == 4000.0  # a longer timeout holds during start-up too
  assert watchdog.resolve_timeout(-1) == watchdog.DEFAULT_TIMEOUT_S and watchdog.resolve_timeout(0) == 0
  with watchdog.Watchdog(0, str(tmp_path)) as off:
    assert off._thread is None


def test_diverged_run_is_one_line_with_its_own_status():
  """main's diverged path (a subprocess: main defines absl flags that the search CLI's tests define too)."""
  script = textwrap.dedent("""
      import sys
      from tpsearch_jax import main
      from tpsearch_jax.training import trainer
      def diverging():
        raise trainer.NonFiniteLossError("non-finite loss at step 3; nothing from this step on was saved")
      main._run = diverging
      code = main._run_or_diverged(verbose=False)
      try:
        main._run_or_diverged(verbose=True)
      except trainer.NonFiniteLossError:
        sys.exit(code)
      sys.exit(99)  # --verbose must show the traceback
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == user_errors.DIVERGED_STATUS == 3, out.stderr[-2000:]
  lines = [line for line in out.stderr.splitlines() if line.startswith("tpsearch_jax.main")]
  assert lines == ["tpsearch_jax.main: diverged: non-finite loss at step 3; nothing from this step on was saved"]
