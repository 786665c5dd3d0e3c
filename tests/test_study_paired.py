"""Paired comparisons over seeds (tpsearch_jax/study/paired.py): differences, the reference choice, the tables."""

from __future__ import annotations

import math

import pytest

from tpsearch_jax.study import paired


def _runs(values: dict[int, float], hard: dict[int, float] | None = None) -> list[dict]:
  """Run records as summary.collect gives them: test R1 per seed (and test_hard R1)."""
  hard = hard or {}
  return [{"seed": s, "rows": {"test": {"R1": v}} | ({"test_hard": {"R1": hard[s]}} if s in hard else {})}
          for s, v in values.items()]


def test_paired_difference_uses_the_common_seeds_and_the_sample_std():
  # Common seeds 0, 1, 2: differences 1, 3, 1 → mean 5/3, sample variance ((2/3)² · 2 + (4/3)²) / 2 = 4/3.
  stat = paired.paired_difference({0: 10.0, 1: 12.0, 2: 11.0}, {0: 9.0, 1: 9.0, 2: 10.0, 3: 5.0})
  assert stat["n"] == 3
  assert stat["mean"] == pytest.approx(5 / 3)
  assert stat["se"] == pytest.approx(math.sqrt(4 / 3) / math.sqrt(3))
  assert paired.paired_difference({0: 1.0}, {1: 2.0}) is None
  assert math.isnan(paired.paired_difference({0: 1.0}, {0: 2.0})["se"])


def test_best_reference_is_the_highest_mean_of_the_column():
  found = {"a": _runs({0: 50.0, 1: 52.0}, {0: 40.0}), "b": _runs({0: 51.0, 1: 53.0}, {0: 30.0}), "c": _runs({0: 99.0})}
  test_r1, hard_r1 = paired.COLUMNS[0][1], paired.COLUMNS[1][1]
  assert paired.best_reference(found, ("a", "b"), test_r1) == "b"  # "c" is not a reference
  assert paired.best_reference(found, ("a", "b"), hard_r1) == "a"
  assert paired.best_reference(found, ("x",), test_r1) is None


def test_paired_table_marks_differences_beyond_two_standard_errors():
  # "p" − "ref" on test R1: 2, 3, 2.5 (mean 2.5, se 0.289: marked); "q" − "ref": 1, −1, 0.5 (mean 0.17: not marked).
  found = {"ref": _runs({0: 50.0, 1: 50.0, 2: 50.0}), "p": _runs({0: 52.0, 1: 53.0, 2: 52.5}),
           "q": _runs({0: 51.0, 1: 49.0, 2: 50.5})}
  lines = paired.paired_tables(found, ("ref",))
  row = {line.split("|")[1].strip(): line for line in lines if line.startswith("| `")}
  diff_rows = [line for line in lines if line.startswith("| `p`") or line.startswith("| `q`")]
  assert "+2.50 ± 0.29 **" in diff_rows[-2]
  assert "+0.17 ± 0.60 |" in diff_rows[-1] and "**" not in diff_rows[-1]
  assert "50.00 ± 0.00" in row["`ref`"]  # the per-method block: mean ± s.e.
