"""The sharded brute-force top-k (``search.topk``) against a float64 numpy argsort reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpsearch_jax.search import topk


def _reference(emb, ids, queries, k):
  """(cosines [Q, k] descending, ids [Q, k]) by full argsort in float64."""
  e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  scores = q @ e.T
  order = np.argsort(-scores, axis=1, kind="stable")
  return np.take_along_axis(scores, order, 1), ids[order], scores


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(7)
  n, d = 1003, 24  # not a multiple of 8 devices × block: exercises padding rows
  emb = rng.standard_normal((n, d))
  ids = rng.permutation(10 * n)[:n].astype(np.int32)  # arbitrary non-contiguous ids
  queries = rng.standard_normal((9, d))
  return emb, ids, queries


def test_top_k_matches_argsort_over_8_devices(data):
  emb, ids, queries = data
  assert jax.device_count() == 8
  k = 12
  ref_scores, ref_ids, _ = _reference(emb, ids, queries, k)
  # Tie-free at the cut: the k-th and (k+1)-th scores differ by far more than float32 rounding.
  assert np.min(ref_scores[:, k - 1] - ref_scores[:, k]) > 1e-5
  index = topk.shard_vectors(emb, ids, block_size=8, dtype=jnp.float32)  # k > block: merges across blocks
  assert len(index.embeddings.sharding.device_set) == 8
  assert index.embeddings.shape[0] // 8 > index.block_size  # several blocks per device
  scores, got = topk.search(index, jnp.asarray(queries, jnp.float32), k)
  np.testing.assert_array_equal(np.asarray(got), ref_ids[:, :k])
  np.testing.assert_allclose(np.asarray(scores), ref_scores[:, :k], atol=1e-5)


def test_bfloat16_index_scores_belong_to_returned_ids(data):
  emb, ids, queries = data
  k = 5
  _, _, all_scores = _reference(emb, ids, queries, k)
  index = topk.shard_vectors(emb, ids, block_size=64)  # bfloat16 by default
  scores, got = topk.search(index, jnp.asarray(queries, jnp.float32), k)
  row_of = {int(i): r for r, i in enumerate(ids)}
  true = np.array([[all_scores[q, row_of[int(i)]] for i in row] for q, row in enumerate(np.asarray(got))])
  np.testing.assert_allclose(np.asarray(scores), true, atol=2e-2)  # bf16 keeps 8 mantissa bits
  ref_best = np.max(all_scores, axis=1)
  assert np.all(true[:, 0] >= ref_best - 2e-2)  # the best hit is (near-)optimal despite bf16 rounding


def test_k_beyond_index_size_returns_padding_last():
  rng = np.random.default_rng(0)
  emb, ids = rng.standard_normal((5, 8)), np.arange(100, 105, dtype=np.int32)
  index = topk.shard_vectors(emb, ids, dtype=jnp.float32)
  scores, got = topk.search(index, jnp.asarray(rng.standard_normal((2, 8)), jnp.float32), 7)
  got, scores = np.asarray(got), np.asarray(scores)
  assert sorted(got[0, :5].tolist()) == list(range(100, 105))
  np.testing.assert_array_equal(got[:, 5:], -1)
  assert np.all(np.isneginf(scores[:, 5:])) and np.all(np.isfinite(scores[:, :5]))


def test_batched_search_covers_a_ragged_query_count(data):
  emb, ids, queries = data
  _, ref_ids, _ = _reference(emb, ids, queries, 3)
  index = topk.shard_vectors(emb, ids, block_size=128, dtype=jnp.float32)
  _, got = topk.search_batched(index, queries, 3, query_batch=4)  # 9 queries → 4 + 4 + 1 (padded)
  np.testing.assert_array_equal(got, ref_ids[:, :3])


def test_bad_inputs_name_the_problem(data):
  emb, ids, _ = data
  with pytest.raises(ValueError, match="ids must be"):
    topk.shard_vectors(emb, ids[:-1])
  index = topk.shard_vectors(emb, ids, dtype=jnp.float32)
  with pytest.raises(ValueError, match=r"queries must be \[Q, 24\]"):
    topk.search(index, jnp.zeros((2, 23)), 3)
