"""Held-out galleries (tpsearch_jax/study/galleries.py): partitions, per-gallery metrics and oracle, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import search_fixtures
from test_hard_subset import CASES, PEOPLE
from tpsearch_jax.data.synthetic import hard_subset
from tpsearch_jax.study import galleries


def test_families_keep_twin_pairs_of_the_split_together():
  # PEOPLE (test_hard_subset): test ids 1, 2 (twins), 3, 4, 7 (twin 8 is in val), 9.
  assert galleries.families(PEOPLE, "test") == [[1, 2], [3], [4], [7], [9]]
  assert galleries.families(PEOPLE, "val") == [[8]]


def test_partition_keeps_families_whole_and_drops_the_short_rest():
  groups = [[1, 2], [3], [4, 5], [6], [7], [8, 9], [10]]
  for seed in range(5):
    parts = galleries.partition(groups, 3, np.random.default_rng(seed))
    ids = [i for p in parts for i in p]
    assert len(ids) == len(set(ids))  # disjoint
    assert all(len(p) >= 3 for p in parts)
    assert all(set(g) <= set(p) or not set(g) & set(p) for g in groups for p in parts)  # families whole
    assert 10 - len(ids) < 3  # what is left over could not fill a gallery
  assert galleries.partition(groups, 3, np.random.default_rng(0)) == galleries.partition(
      groups, 3, np.random.default_rng(0))


def test_gallery_rows_score_each_gallery_against_its_own_images_only():
  # Images of pids 1, 2, 3, 4; one query each. Globally queries 1 and 3 rank a foreign image first (R1 50), but
  # inside gallery {1, 2} query 1's top image is its own (the foreign one is in the other gallery).
  gallery_pids = np.array([1, 2, 3, 4])
  query_pids = np.array([1, 2, 3, 4])
  scores = np.array([[0.5, 0.1, 0.9, 0.0],   # 1: pid 3 first globally, own image first within {1, 2}
                     [0.2, 0.8, 0.1, 0.3],   # 2: own first
                     [0.1, 0.0, 0.4, 0.7],   # 3: pid 4 first, also within {3, 4}: rank 2 of 2
                     [0.0, 0.2, 0.1, 0.6]],  # 4: own first
                    np.float32)
  rows = galleries.gallery_rows(scores, query_pids, gallery_pids, [[1, 2], [3, 4]])
  assert [(r["queries"], r["gallery"]) for r in rows] == [(2, 2), (2, 2)]
  np.testing.assert_allclose([r["R1"] for r in rows], [100.0, 50.0])
  np.testing.assert_allclose([r["mAP"] for r in rows], [100.0, 75.0])  # query 3: AP 1/2


def test_oracle_r1_counts_only_the_gallery_identities():
  # CASES' captions of pids 1, 1, 2 and 7 (test_hard_subset, by hand): "blue jeans, black shoes" fits 1, 2, 7 and 9,
  # so 1 and 2 in the gallery {1, 2}; every other caption fits its own person only. Pid 7's caption is a query of a
  # gallery only when 7 is in it.
  captions = [c for c, pid, _ in CASES if pid in (1, 2, 7)]
  pids = np.array([pid for _, pid, _ in CASES if pid in (1, 2, 7)])
  test_people = [p for p in PEOPLE if p["split"] == "test"]
  fits = hard_subset.fit_matrix(test_people, captions)
  ids = [p["id"] for p in test_people]
  assert galleries.oracle_r1(fits, ids, pids, [1, 2]) == pytest.approx(100 * (1 + 1 / 2 + 1) / 3)
  assert galleries.oracle_r1(fits, ids, pids, [1, 2, 7, 9]) == pytest.approx(100 * (1 + 1 / 4 + 1 + 1) / 4)


def test_summarise_takes_one_partition_as_the_independent_samples():
  rows = [{"R1": v} for v in (40.0, 60.0, 50.0, 70.0)]  # 2 partitions of 2 galleries
  got = galleries.summarise(rows, repeats=2)["R1"]
  assert got["mean"] == pytest.approx(55.0)
  assert got["sem"] == pytest.approx(np.std([40, 60, 50, 70], ddof=1) / np.sqrt(2))


def test_cli_scores_a_trained_run_on_a_generated_pool(tmp_path_factory, tmp_path):
  run = search_fixtures.trained_run(tmp_path_factory)
  pool = galleries.ensure_pool(str(tmp_path / "pool"), num_ids=24, seed=3)
  out = tmp_path / "galleries.json"
  assert galleries.main(["--workdir", run["workdir"], "--pool", pool, "--ids_per_gallery", "4", "--repeats", "2",
                         "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  with open(os.path.join(pool, "attributes.json")) as f:
    identities = json.load(f)["identities"]
  expected = sum(len(galleries.partition(galleries.families(identities, s), 4, np.random.default_rng([r, i])))
                 for i, s in enumerate(("val", "test")) for r in range(2))
  assert result["galleries"] == expected > 2
  model, oracle = result["model"], result["oracle"]
  assert model["gallery"]["mean"] >= 4 * 4  # at least 4 identities × 4 images
  assert 0.0 <= model["R1"]["mean"] <= model["R5"]["mean"] <= 100.0
  assert 0.0 < oracle["R1"]["mean"] <= 100.0 and oracle["R1"]["sem"] >= 0.0
  assert result["step"] > 0 and os.path.isdir(result["checkpoint"])
