"""Sort-free retrieval metrics vs a full-argsort numpy evaluator, hand-computed examples, sharding, block sizes."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import numpy_reference as ref
from tpsearch_jax.metrics import (grouped_retrieval_metrics, retrieval_metrics,
                                  retrieval_metrics_from_embeddings)


def _problem(seed, q, g, ids, d=None):
  rng = np.random.default_rng(seed)
  gp = rng.integers(0, ids, size=g)
  qp = rng.choice(gp, size=q)  # every query has a positive
  if d is None:
    return rng.normal(size=(q, g)).astype(np.float32), qp, gp
  qe = rng.normal(size=(q, d)).astype(np.float32)
  ge = rng.normal(size=(g, d)).astype(np.float32)
  return qe, ge, qp, gp


def _assert_matches_reference(got, want):
  for k in ("R1", "R5", "R10"):
    assert got[k] == pytest.approx(want[k], abs=1e-9), k
  assert got["mAP"] == pytest.approx(want["mAP"], rel=1e-6)
  assert got["mINP"] == pytest.approx(want["mINP"], rel=1e-9)


@pytest.mark.parametrize("q,g,ids", [(300, 200, 40), (64, 500, 5), (17, 9, 3)])
def test_matches_full_sort_reference(q, g, ids):
  sim, qp, gp = _problem(q + g, q, g, ids)
  want = ref.retrieval_full_sort(sim, qp, gp)
  _assert_matches_reference(retrieval_metrics(sim, qp, gp, block_size=32), want)
  _assert_matches_reference(retrieval_metrics(sim, qp, gp, block_size=32, ties="pessimistic"), want)


def test_hand_computed_example():
  gp = np.array([1, 2, 1, 3, 1])
  qp = np.array([1, 2, 9])
  sim = np.array([[0.9, 0.8, 0.1, 0.95, 0.5],   # positives at ranks 2, 4, 5
                  [0.2, 0.7, 0.3, 0.1, 0.6],    # its only positive is first
                  [0.1, 0.2, 0.3, 0.4, 0.5]], np.float32)  # pid 9 is not in the gallery
  got = retrieval_metrics(sim, qp, gp, return_counts=True)
  assert got["R1"] == pytest.approx(50.0)
  assert got["R5"] == pytest.approx(100.0) and got["R10"] == pytest.approx(100.0)
  assert got["mAP"] == pytest.approx(100 * ((1 / 2 + 2 / 4 + 3 / 5) / 3 + 1) / 2, rel=1e-6)
  assert got["mINP"] == pytest.approx(100 * (3 / 5 + 1) / 2)
  assert got["num_queries"] == 2 and got["num_queries_without_positive"] == 1


def test_tie_conventions():
  sim = np.full((1, 3), 0.5, np.float32)
  qp, gp = np.array([1]), np.array([1, 2, 1])
  opt = retrieval_metrics(sim, qp, gp)  # positives first among equals: ranks 1, 2
  assert (opt["R1"], opt["mAP"], opt["mINP"]) == pytest.approx((100.0, 100.0, 100.0))
  pes = retrieval_metrics(sim, qp, gp, ties="pessimistic")  # the negative first: ranks 2, 3
  assert (pes["R1"], pes["mAP"], pes["mINP"]) == pytest.approx((0.0, 100 * (1 / 2 + 2 / 3) / 2, 100 * 2 / 3))


def test_block_size_independence():
  sim, qp, gp = _problem(3, 130, 90, 12)
  results = [retrieval_metrics(sim, qp, gp, block_size=b) for b in (1, 7, 1000)]
  for r in results[1:]:
    assert r == results[0]
  emb = _problem(4, 130, 90, 12, d=16)
  e_results = [retrieval_metrics_from_embeddings(*emb, block_size=b) for b in (3, 256)]
  for r in e_results[1:]:
    assert r == e_results[0]


def test_embeddings_variant_equals_matrix_variant():
  qe, ge, qp, gp = _problem(5, 70, 110, 9, d=24)
  sim = np.asarray(jnp.matmul(qe, ge.T, precision=jax.lax.Precision.HIGHEST))
  low = jnp.asarray(qe, jnp.bfloat16)
  assert (retrieval_metrics_from_embeddings(low, ge, qp, gp)
          == retrieval_metrics_from_embeddings(np.asarray(low.astype(jnp.float32)), ge, qp, gp))
  emb = retrieval_metrics_from_embeddings(qe, ge, qp, gp, block_size=16)
  assert emb == retrieval_metrics(sim, qp, gp, block_size=16)
  _assert_matches_reference(emb, ref.retrieval_full_sort(qe.astype(np.float64) @ ge.T.astype(np.float64), qp, gp))


def test_sharded_over_queries_equals_unsharded():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py should provide 8 CPU devices"
  mesh = Mesh(np.array(devices), ("q",))
  sim, qp, gp = _problem(6, 96, 75, 10)
  sharded = jax.device_put(sim, NamedSharding(mesh, P("q", None)))
  want = retrieval_metrics(sim, qp, gp, block_size=5)
  assert retrieval_metrics(sharded, qp, gp, block_size=5) == want
  _assert_matches_reference(want, ref.retrieval_full_sort(sim, qp, gp))

  mesh2d = Mesh(np.array(devices).reshape(4, 2), ("a", "b"))
  assert retrieval_metrics(jax.device_put(sim, NamedSharding(mesh2d, P(("a", "b")))), qp, gp, block_size=5) == want

  qe, ge, qp, gp = _problem(7, 96, 75, 10, d=8)
  q_sharded = jax.device_put(qe, NamedSharding(mesh2d, P("a", None)))  # replicated over "b"
  assert (retrieval_metrics_from_embeddings(q_sharded, ge, qp, gp, block_size=4)
          == retrieval_metrics_from_embeddings(qe, ge, qp, gp, block_size=4))


def test_queries_without_positive_are_excluded_and_logged(caplog):
  sim, qp, gp = _problem(8, 40, 30, 6)
  qp = qp.copy()
  qp[[3, 17]] = 1000
  keep = qp != 1000
  with caplog.at_level(logging.WARNING):
    got = retrieval_metrics(sim, qp, gp, return_counts=True)
  assert "2 of 40 queries have no positive" in caplog.text
  assert got["num_queries"] == 38 and got["num_queries_without_positive"] == 2
  _assert_matches_reference(got, ref.retrieval_full_sort(sim[keep], qp[keep], gp))


def test_bfloat16_similarity_is_accepted():
  sim, qp, gp = _problem(9, 30, 40, 5)
  low = jnp.asarray(sim, jnp.bfloat16)
  assert retrieval_metrics(low, qp, gp) == retrieval_metrics(np.asarray(low.astype(jnp.float32)), qp, gp)


def test_bad_inputs_raise():
  sim, qp, gp = _problem(10, 6, 5, 2)
  sim[4, 2] = np.nan
  with pytest.raises(ValueError, match="non-finite.*row 4"):
    retrieval_metrics(sim, qp, gp)
  with pytest.raises(ValueError, match="query_pids"):
    retrieval_metrics(sim, qp[:3], gp)
  with pytest.raises(ValueError, match="none of the 6 queries"):
    retrieval_metrics(np.zeros((6, 5), np.float32), qp + 100, gp)


def test_grouped_metrics_equal_the_numpy_reference_of_each_groups_rows():
  sim, qp, gp = _problem(3, 60, 90, 12)
  groups = np.random.default_rng(4).integers(0, 4, size=60)
  got = grouped_retrieval_metrics(sim, qp, gp, groups)
  assert set(got) == set(groups.tolist())
  for label, row in got.items():
    rows = groups == label
    _assert_matches_reference(row, ref.retrieval_full_sort(sim[rows], qp[rows], gp))
    assert (row["num_queries"], row["num_queries_without_positive"]) == (int(rows.sum()), 0)
  with pytest.raises(ValueError, match="group 'x'"):
    grouped_retrieval_metrics(sim[:2], np.array([qp[0], 10 ** 6]), gp, np.array(["y", "x"]))
