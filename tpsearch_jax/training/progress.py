"""Training progress from wall time: steps/s and ETA measured between host synchronisations.

A jitted step returns as soon as it is dispatched, so timing the loop body measures dispatch, not work. The trainer
calls ``report`` only after it has fetched the step's metrics (a host sync), so the wall time between two reports
is the time the device spent on those steps. Time spent in evaluation or checkpointing is excluded (``paused``).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable


def format_duration(seconds: float) -> str:
  """Seconds → "1h02m", "3m05s" or "12s" ("?" when not finite)."""
  if not math.isfinite(seconds):
    return "?"
  seconds = max(int(round(seconds)), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m"
  return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
  """Steps/s over the last window and over the run, and the ETA to ``stop_step``; clock injectable for tests."""

  def __init__(self, start_step: int, stop_step: int, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self.stop_step = int(stop_step)
    self._last_step = self._first_step = int(start_step)
    self._last_time = self._first_time = clock()
    self._excluded = 0.0  # paused seconds since the last report
    self._excluded_total = 0.0

  @contextlib.contextmanager
  def paused(self):
    """Time inside this block (evaluation, checkpoint saves) does not count as training time."""
    t0 = self._clock()
    try:
      yield
    finally:
      dt = self._clock() - t0
      self._excluded += dt
      self._excluded_total += dt

  def report(self, step: int) -> dict[str, float]:
    """Call right after a host sync at ``step`` → {"steps_per_sec", "steps_per_sec_run", "eta_seconds"}."""
    now = self._clock()
    window = max(now - self._last_time - self._excluded, 1e-9)
    run = max(now - self._first_time - self._excluded_total, 1e-9)
    rate = (step - self._last_step) / window
    run_rate = (step - self._first_step) / run
    self._last_step, self._last_time, self._excluded = int(step), now, 0.0
    eta = (self.stop_step - step) / run_rate if run_rate > 0 else float("inf")
    return {"steps_per_sec": rate, "steps_per_sec_run": run_rate, "eta_seconds": eta}

  def line(self, step: int, stats: dict[str, float]) -> str:
    """One log line: "step 40/240 (16.7 %): 0.45 steps/s, ETA 7m24s"."""
    share = 100.0 * step / max(self.stop_step, 1)
    return (f"step {step}/{self.stop_step} ({share:.1f} %): {stats['steps_per_sec']:.3g} steps/s, "
            f"ETA {format_duration(stats['eta_seconds'])}")
