"""The stall watchdog: a run in which nothing finishes for ``train.stall_timeout_s`` writes its stacks and exits.

A collective that never completes (a lost peer whose sockets stay open, a runtime bug) blocks every process of a
multi-process run in native code, where neither Python exceptions nor the distributed runtime's heartbeats reach it.
A scheduler can only restart a job that ends, so a daemon thread watches the time since the last *finished* unit of
work — a host-synced train step, an evaluation, a checkpoint save — and, past the timeout, writes every thread's
Python stack to the log and to ``WORKDIR/stall_<process>.txt``, prints one line naming the last finished step, and
ends the process with ``STALLED_STATUS``. Every process runs its own watchdog; a process stopped by the kernel
(SIGSTOP) fires when it is resumed.

Start-up (restoring or initialising the state, the first step's compilation) ends with the first finished unit; until
then the limit is at least DEFAULT_TIMEOUT_S, so a timeout sized for the gaps between steps does not end a run whose
first compile is slow.
"""

from __future__ import annotations

import faulthandler
import io
import os
import sys
import tempfile
import threading
import time

from absl import logging

from tpsearch_jax.user_errors import STALLED_STATUS
# train.stall_timeout_s < 0 (the default) picks this, growing to ADAPTIVE_FACTOR × the longest gap seen between
# finished units of work. Measured on CPU (benchmarks/RESULTS.md, small towers at 384×128, 2 cores under load): the
# slowest train-step compile 72 s and the slowest step 8.8 s, i.e. 7.5 min between host syncs at the default 50-step
# log interval; accelerators compile and step faster.
DEFAULT_TIMEOUT_S = 1800.0
ADAPTIVE_FACTOR = 3.0
STARTUP = "start-up"  # what the watchdog waits for before the first beat


def resolve_timeout(value: float) -> float:
  """``train.stall_timeout_s`` → seconds: < 0 → DEFAULT_TIMEOUT_S, 0 → off (returns 0), > 0 as given."""
  value = float(value)
  return DEFAULT_TIMEOUT_S if value < 0 else value


class Watchdog:
  """Use as a context manager; call ``beat(step)`` whenever a unit of work has finished (``step`` = the last step)."""

  def __init__(self, timeout_s: float, workdir: str, process_index: int = 0, *, adaptive: bool = False,
               poll_s: float | None = None):
    self.timeout_s = float(timeout_s)
    self.adaptive = adaptive  # the limit grows to ADAPTIVE_FACTOR × the longest gap seen between beats
    self._longest = 0.0
    self.workdir = workdir
    self.process_index = int(process_index)
    self.poll_s = poll_s if poll_s is not None else min(max(self.timeout_s / 20, 0.2), 5.0)
    self.last_step: int | None = None
    self.what = STARTUP
    self._last = time.monotonic()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def beat(self, step: int | None, what: str = "train step") -> None:
    """Records that ``what`` finished (at ``step``): the timeout counts again from now."""
    now = time.monotonic()
    self._longest = max(self._longest, now - self._last)
    self._last = now
    if step is not None:
      self.last_step = int(step)
    self.what = what

  def __enter__(self):
    if self.timeout_s > 0:
      self._last = time.monotonic()
      self._thread = threading.Thread(target=self._watch, name="tpsearch-stall-watchdog", daemon=True)
      self._thread.start()
      logging.info("Stall watchdog: a run where no step, evaluation or save finishes within %.0f s writes its stacks "
                   "to %s and exits with status %d", self.timeout_s, self.stack_file, STALLED_STATUS)
    return self

  def __exit__(self, *exc):
    self._stop.set()
    return False

  @property
  def limit_s(self) -> float:
    """The current timeout: ``timeout_s``, or in adaptive mode at least ADAPTIVE_FACTOR × the longest gap so far;
    during start-up (no unit finished yet) at least DEFAULT_TIMEOUT_S."""
    if self.what == STARTUP:
      return max(self.timeout_s, DEFAULT_TIMEOUT_S)
    return max(self.timeout_s, ADAPTIVE_FACTOR * self._longest) if self.adaptive else self.timeout_s

  @property
  def stack_file(self) -> str:
    return os.path.join(self.workdir, f"stall_{self.process_index}.txt")

  def _watch(self) -> None:
    while not self._stop.wait(self.poll_s):
      idle = time.monotonic() - self._last
      if idle > self.limit_s:
        self._fire(idle)
        return

  def message(self, idle: float) -> str:
    last = "none yet" if self.last_step is None else str(self.last_step)
    return (f"stalled: nothing finished for {idle:.0f} s (limit {self.limit_s:.0f} s, train.stall_timeout_s) in process "
            f"{self.process_index}; last finished step: {last} (after the {self.what}); all threads' stacks in "
            f"{self.stack_file}; rerun the same command to resume from the last checkpoint")

  def _fire(self, idle: float) -> None:
    """Writes every thread's stack (log, stderr, the stack file), one line on stderr, and ends the process."""
    line = self.message(idle)
    with io.StringIO() as buf:
      buf.write(line + "\n\n")
      stacks = _all_stacks()
      buf.write(stacks)
      text = buf.getvalue()
    try:
      os.makedirs(self.workdir, exist_ok=True)
      with open(self.stack_file, "w") as f:
        f.write(text)
    except OSError as e:
      logging.error("cannot write %s: %s", self.stack_file, e)
    logging.error("%s\n%s", line, stacks)
    logging.flush()
    print(f"tpsearch_jax.main: error (process {self.process_index}): {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(STALLED_STATUS)  # the main thread is blocked in native code: no clean way out of it


def _all_stacks() -> str:
  """Every thread's Python stack, as faulthandler writes them (the native frames need gdb / py-spy --native)."""
  names = {t.ident: t.name for t in threading.enumerate()}
  try:
    with tempfile.TemporaryFile("w+") as f:
      faulthandler.dump_traceback(f, all_threads=True)
      f.seek(0)
      text = f.read()
  except OSError as e:
    return f"(could not dump the stacks: {e})"
  header = "threads: " + ", ".join(f"{ident:#x}={name}" for ident, name in names.items())
  return header + "\n" + text
