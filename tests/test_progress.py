"""Training progress is measured in wall time between host syncs, excluding evaluation pauses (a fake clock)."""

from __future__ import annotations

import math

import pytest

from tpsearch_jax.training.progress import Progress, format_duration


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_rate_and_eta_follow_wall_time_between_reports():
  clock = FakeClock()
  p = Progress(start_step=40, stop_step=240, clock=clock)
  clock.now += 25.0  # 10 steps took 25 s of device time (the report comes after a host sync)
  stats = p.report(50)
  assert stats["steps_per_sec"] == pytest.approx(0.4)
  assert stats["eta_seconds"] == pytest.approx(190 / 0.4)
  clock.now += 10.0  # the next 10 steps were faster
  stats = p.report(60)
  assert stats["steps_per_sec"] == pytest.approx(1.0)
  assert stats["steps_per_sec_run"] == pytest.approx(20 / 35)
  assert stats["eta_seconds"] == pytest.approx(180 / (20 / 35))


def test_paused_time_is_not_training_time():
  clock = FakeClock()
  p = Progress(start_step=0, stop_step=100, clock=clock)
  clock.now += 5.0
  with p.paused():  # an evaluation of 300 s
    clock.now += 300.0
  clock.now += 5.0
  stats = p.report(20)
  assert stats["steps_per_sec"] == pytest.approx(2.0)
  assert stats["eta_seconds"] == pytest.approx(40.0)
  assert "ETA 40s" in p.line(20, stats) and "step 20/100" in p.line(20, stats)


def test_format_duration():
  assert format_duration(3725) == "1h02m"
  assert format_duration(185) == "3m05s"
  assert format_duration(12.4) == "12s"
  assert format_duration(math.inf) == "?"
