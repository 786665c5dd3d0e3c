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


def test_best_reference_is_the_highest_mean_of_the_column_among_the_most_seeds():
  found = {"a": _runs({0: 50.0, 1: 52.0}, {0: 40.0}), "b": _runs({0: 51.0, 1: 53.0}, {0: 30.0}), "c": _runs({0: 99.0})}
  test_r1, hard_r1 = paired.COLUMNS[0][1], paired.COLUMNS[1][1]
  assert paired.best_reference(found, ("a", "b"), test_r1) == "b"  # "c" is not a reference
  assert paired.best_reference(found, ("a", "b"), hard_r1) == "a"
  assert paired.best_reference(found, ("x",), test_r1) is None
  # a reference with fewer seeds is not chosen, whatever its mean: it would pair with fewer seeds
  found["d"] = _runs({0: 60.0}, {0: 45.0})
  assert paired.best_reference(found, ("a", "b", "d"), test_r1) == "b"
  assert paired.best_reference(found, ("a", "b", "d"), hard_r1) == "d"  # every reference has 1 seed of test_hard


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


def test_summary_with_unfinished_methods_and_held_out_results(tmp_path):
  """A study whose last method has no finished run yet; held-out results read from each run folder: the tables list
  the finished methods, their held-out means ± s.e., and the paired difference to the reference."""
  import json
  import os

  import ml_collections

  from tpsearch_jax.study import summarize
  from tpsearch_jax.study.runner import run_dir

  heldout = {("ref", 0): 40.0, ("ref", 1): 44.0, ("p", 0): 43.0, ("p", 1): 46.0}  # p − ref: 3, 2
  for (method, seed), r1 in heldout.items():
    wd = run_dir(str(tmp_path), method, seed)
    os.makedirs(wd)
    rows = {s: {"R1": r1, "R5": 1.0, "R10": 1.0, "mAP": 1.0, "mINP": 1.0, "num_queries": 4, "num_gallery": 8}
            for s in ("val", "test", "test_hard")}
    with open(os.path.join(wd, "results.json"), "w") as f:
      json.dump({"splits": rows}, f)
    with open(os.path.join(wd, paired.HELDOUT_FILE), "w") as f:
      json.dump({"model": {"R1": {"mean": r1, "sem": 1.0}}, "hard": {"R1": {"mean": r1 - 5, "sem": 1.0}}}, f)
  study = ml_collections.ConfigDict({"methods": ("ref", "p", "not_yet"), "seeds": (0, 1), "steps_per_epoch": 0,
                                     "variants": (), "reference": ("ref",), "heldout_pool": ""})
  text = summarize(study, str(tmp_path))
  assert "not_yet" not in text.split("## Wall time")[0]  # only the wall-time table lists every method
  assert "(test: 4 queries, 8 gallery images" in text
  pairs = text.split("## Paired by seed")[1].split("## Wall time")[0].splitlines()
  row = next(line for line in pairs if line.startswith("| `p` | 2 |"))
  assert "44.50 ± 1.50" in row  # held-out R1 of p: mean of 43, 46; s.e. = std(ddof 1) / √2 = 1.5
  diff = [line for line in pairs if line.startswith("| `p` |")][-1]
  assert diff.count("+2.50 ± 0.50 **") == 4  # every column: differences 3 and 2 (test rows carry the same R1)
  assert os.path.isfile(os.path.join(tmp_path, "heldout_r1.png"))


def test_binding_table_means_each_measure_over_the_seeds_that_have_it():
  def run(seed, share, chance, auc):
    binding = {"foreground_auc": auc, "twin_gap": {"share": share, "chance": chance},
               "part_attention": {"mass": [0.2, 0.4], "chance": [0.1, 0.1]},
               "coarse_cosine": {"image": 0.5, "text": 0.7}}
    return {"seed": seed, "rows": {"test": {"R1": 1.0, "binding": binding}}}
  found = {"p": [run(0, 0.1, 0.2, 0.8), run(1, float("nan"), float("nan"), 0.6)], "g": [{"seed": 0, "rows": {}}]}
  header, _, row = paired.binding_table(found)
  # AUC over both seeds (0.7); the twin gap over seed 0 alone (seed 1's is NaN); "g" has no binding: no row
  assert row == "| `p` | 2 | 0.700 | 0.100 (0.200) | 0.300 (0.100) | 0.500 / 0.700 |", row
  assert "twin-gap share" in header
