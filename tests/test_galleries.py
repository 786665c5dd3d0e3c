"""Held-out galleries (tpsearch_jax/study/galleries.py): partitions, per-gallery metrics and oracle, the CLI."""

from __future__ import annotations

import json
import os
import statistics

import jax
import numpy as np
import pytest

import numpy_reference as ref
import search_fixtures
from test_hard_subset import CASES, PEOPLE
from tpsearch_jax.data import annotations, preprocess
from tpsearch_jax.data.synthetic import hard_subset
from tpsearch_jax.models import text_tokenizers
from tpsearch_jax.study import galleries
from tpsearch_jax.study.example import split_scores
from tpsearch_jax.training import runs


def test_families_keep_twin_pairs_of_the_split_together():
  # PEOPLE (test_hard_subset): test ids 1, 2 (twins), 3, 4, 7 (twin 8 is in val), 9.
  assert galleries.families(PEOPLE, "test") == [[1, 2], [3], [4], [7], [9]]
  assert galleries.families(PEOPLE, "val") == [[8]]


def test_families_follow_the_twin_link_either_way():
  """The generator shuffles ids, so ``twin_of`` may name a larger id than its own (as in its attributes.json)."""
  people = [{"id": 5, "split": "test", "twin_of": 11}, {"id": 11, "split": "test", "twin_of": None},
            {"id": 3, "split": "test", "twin_of": None}, {"id": 12, "split": "test", "twin_of": 3},
            {"id": 0, "split": "test", "twin_of": 4}, {"id": 4, "split": "test", "twin_of": None},
            {"id": 7, "split": "test", "twin_of": 8}, {"id": 8, "split": "val", "twin_of": None}]
  assert galleries.families(people, "test") == [[0, 4], [3, 12], [5, 11], [7]]


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


def test_gallery_rows_of_a_query_subset_leave_out_galleries_without_one():
  # The scores of the test above; only queries 1 and 3 are kept. Gallery {1, 2} scores query 1 alone (R1 100),
  # gallery {3, 4} query 3 alone (rank 2: R1 0, AP 1/2); a third gallery {5} has no kept query and gets no row.
  scores = np.array([[0.5, 0.1, 0.9, 0.0, 0.3], [0.2, 0.8, 0.1, 0.3, 0.0], [0.1, 0.0, 0.4, 0.7, 0.2],
                     [0.0, 0.2, 0.1, 0.6, 0.1], [0.0, 0.1, 0.2, 0.3, 0.9]], np.float32)
  pids = np.array([1, 2, 3, 4, 5])
  rows = galleries.gallery_rows(scores, pids, pids, [[1, 2], [3, 4], [5]],
                                queries=np.array([True, False, True, False, False]))
  assert [(r["queries"], r["gallery"]) for r in rows] == [(1, 2), (1, 2)]
  np.testing.assert_allclose([r["R1"] for r in rows], [100.0, 0.0])
  np.testing.assert_allclose([r["mAP"] for r in rows], [100.0, 50.0])


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


# Hand-built pool: ids 1..12, twins (1, 2), (5, 6), (9, 10); 2 images and 1 to 3 captions per person.
FAMILIES = [[1, 2], [3], [4], [5, 6], [7], [8], [9, 10], [11], [12]]
# Two partitions into known galleries (families whole); id 12 is left out of the second one.
PARTITIONS = [[[1, 2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12]], [[3, 4, 7], [1, 2, 8, 11], [5, 6, 9, 10]]]


def _greedy_count(groups, ids_per_gallery, rng):
  """How many galleries the documented fill rule makes: families in the permuted order, a gallery closed as soon as
  it holds ``ids_per_gallery`` ids, the short rest dropped (written here from the docstring)."""
  count, size = 0, 0
  for i in rng.permutation(len(groups)):
    size += len(groups[i])
    if size >= ids_per_gallery:
      count, size = count + 1, 0
  return count


def test_per_gallery_metrics_and_standard_error_match_brute_force():
  """Each gallery's metrics = the full-sort numpy metrics of its own queries × its own images (a separate matrix per
  gallery); mean and standard error = statistics over the galleries, n = galleries per partition."""
  rng = np.random.default_rng(5)
  image_pids = np.repeat(np.arange(1, 13), 2)
  caption_pids = np.concatenate([[p] * (1 + p % 3) for p in range(1, 13)])
  scores = rng.normal(size=(len(caption_pids), len(image_pids))).astype(np.float32)
  scores[np.arange(len(caption_pids)), 2 * (caption_pids - 1)] += 1.0  # better than chance, not perfect
  rows = []
  for galleries_ in PARTITIONS:
    got = galleries.gallery_rows(scores, caption_pids, image_pids, galleries_)
    for ids, row in zip(galleries_, got):
      q, g = np.isin(caption_pids, ids), np.isin(image_pids, ids)
      want = ref.retrieval_full_sort(scores[np.ix_(q, g)], caption_pids[q], image_pids[g])
      for k in galleries.METRICS:
        np.testing.assert_allclose(row[k], want[k], rtol=1e-5, err_msg=f"{ids} {k}")
      assert (row["queries"], row["gallery"]) == (q.sum(), g.sum())
    rows += got
  assert len({round(r["R1"], 3) for r in rows}) > 3  # the galleries differ
  summary = galleries.summarise(rows, repeats=len(PARTITIONS))
  per_partition = len(rows) / len(PARTITIONS)
  for k in galleries.METRICS:
    values = [r[k] for r in rows]
    assert summary[k]["mean"] == pytest.approx(statistics.mean(values))
    assert summary[k]["sem"] == pytest.approx(statistics.stdev(values) / per_partition ** 0.5)


def test_partition_of_hand_built_families_fills_galleries_in_order():
  for seed in range(4):
    parts = galleries.partition(FAMILIES, 3, np.random.default_rng(seed))
    order = np.random.default_rng(seed).permutation(len(FAMILIES))
    expected, current = [], []
    for i in order:
      current += FAMILIES[i]
      if len(current) >= 3:
        expected.append(sorted(current))
        current = []
    assert parts == expected


def test_cli_scores_a_trained_run_on_a_generated_pool(tmp_path_factory, tmp_path):
  run = search_fixtures.trained_run(tmp_path_factory)
  pool = galleries.ensure_pool(str(tmp_path / "pool"), num_ids=24, seed=3)
  out = tmp_path / "galleries.json"
  assert galleries.main(["--workdir", run["workdir"], "--pool", pool, "--ids_per_gallery", "4", "--repeats", "2",
                         "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  with open(os.path.join(pool, "attributes.json")) as f:
    identities = json.load(f)["identities"]
  expected = 0
  for i, split in enumerate(("val", "test")):
    members = {p["id"] for p in identities if p["split"] == split}
    links = {frozenset((p["id"], p["twin_of"])) for p in identities if {p["id"], p["twin_of"]} <= members}
    groups = [sorted(link) for link in links] + [[pid] for pid in members if not any(pid in k for k in links)]
    expected += sum(_greedy_count(groups, 4, np.random.default_rng([r, i])) for r in range(2))
  assert result["galleries"] == expected > 2
  model, oracle = result["model"], result["oracle"]
  assert model["gallery"]["mean"] >= 4 * 4  # at least 4 identities × 4 images
  assert 0.0 <= model["R1"]["mean"] <= model["R5"]["mean"] <= 100.0
  assert 0.0 < oracle["R1"]["mean"] <= 100.0 and oracle["R1"]["sem"] >= 0.0
  assert result["step"] > 0 and os.path.isdir(result["checkpoint"])


def test_split_scores_equal_an_independent_encoding(tmp_path_factory):
  """split_scores (tf.data eval pipeline, batched, padding rows dropped) = caption × image cosines of the run's model
  on images read by the numpy preprocessing and captions tokenized here, one caption and image at a time."""
  info = search_fixtures.trained_run(tmp_path_factory)
  run = runs.load_run(info["workdir"], "auto")
  data = annotations.read_annotations(run.options.data.name, run.options.data.root).split("test")
  got = split_scores(run, data)
  cfg = run.options.data
  images = np.stack([preprocess.load_eval_image(p, cfg.image_size, cfg.normalization) for p in data.image_paths])
  ids = text_tokenizers.caption_tokenizer(cfg)(data.captions, int(cfg.context_length))
  encode = jax.jit(lambda x, method: run.model.apply({"params": run.params}, x, method=method), static_argnums=1)
  img = np.concatenate([np.asarray(encode(images[i:i + 1], "encode_images"), np.float64) for i in range(len(images))])
  txt = np.concatenate([np.asarray(encode(ids[i:i + 1], "encode_texts"), np.float64) for i in range(len(ids))])
  assert got.shape == (len(data.captions), len(data.image_paths)) and len(data.captions) != len(data.image_paths)
  np.testing.assert_allclose(got, txt @ img.T, atol=2e-3)
  assert np.mean(np.argmax(got, 1) == np.argmax(txt @ img.T, 1)) > 0.9
