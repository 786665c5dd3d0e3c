"""Evaluator plumbing: sharded encoding, padding removal, on-device metrics — against hand-computed rankings."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpsearch_jax import evaluate, sharding

# Query × gallery similarities chosen by hand. Gallery pids [1, 1, 2, 3]; query pids [1, 2, 3].
SIM = np.array([[0.1, 0.9, 0.5, 0.7],    # q0 (pid 1): order g1+ g3 g2 g0+ → positive ranks 1, 4
                [0.8, 0.6, 0.3, 0.1],    # q1 (pid 2): order g0 g1 g2+ g3  → positive rank 3
                [0.2, 0.1, 0.3, 0.9]],   # q2 (pid 3): order g3+ …         → positive rank 1
               np.float32)
GALLERY_PIDS = np.array([1, 1, 2, 3], np.int32)
QUERY_PIDS = np.array([1, 2, 3], np.int32)
# R@K = mean 1[first positive rank ≤ K]; AP = (1/n) Σ_k k / r_k; INP = n / r_last.
EXPECTED = {
    "R1": 100 * 2 / 3, "R5": 100.0, "R10": 100.0,
    "mAP": 100 * ((1 / 1 + 2 / 4) / 2 + 1 / 3 + 1) / 3,
    "mINP": 100 * (2 / 4 + 1 / 3 + 1) / 3,
}


class LookupModel(nn.Module):
  """encode_images: gallery index → one-hot [G]; encode_texts: query index → row of SIM. So q·g = SIM[q, g]."""

  @nn.compact
  def __call__(self, x):
    return x

  def encode_images(self, index):
    return jax.nn.one_hot(index[:, 0], SIM.shape[1], dtype=jnp.float32)

  def encode_texts(self, index):
    return jnp.asarray(SIM)[index[:, 0]]


def _batches(key, pids, batch_size, order):
  """Global batches of indices ``order`` padded to ``batch_size`` with valid=False rows (index 0, pid -1)."""
  out = []
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    pad = batch_size - len(idx)
    out.append({key: np.concatenate([idx, np.zeros(pad, np.int64)]).astype(np.int32)[:, None],
                "pids": np.concatenate([pids[idx], -np.ones(pad, np.int32)]).astype(np.int32),
                "valid": np.concatenate([np.ones(len(idx), bool), np.zeros(pad, bool)])})
  return out


# 8 queries (q0 ×2, q1 ×3, q2 ×3): divisible by 8 devices, so the queries are sharded over the mesh.
ORDER_8 = np.array([1, 2, 0, 1, 2, 0, 1, 2])
EXPECTED_8 = {"R1": 100 * 5 / 8, "R5": 100.0, "R10": 100.0, "mAP": 100 * (2 * 0.75 + 3 / 3 + 3) / 8,
              "mINP": 100 * (2 * 0.5 + 3 / 3 + 3) / 8}


@pytest.mark.parametrize("num_devices,query_order,expected", [
    (1, np.array([1, 2, 0]), EXPECTED), (8, np.array([1, 2, 0]), EXPECTED), (8, ORDER_8, EXPECTED_8)])
def test_known_similarity_gives_hand_computed_metrics(num_devices, query_order, expected):
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  evaluator = evaluate.Evaluator(LookupModel(), mesh, params_sharding={}, block_size=2)
  # Padding rows duplicate gallery item 0 (sim 0.8 for q1): counted, they would push q1's positive to rank 7.
  images = _batches("images", GALLERY_PIDS, 8, np.array([2, 0, 3, 1]))
  texts = _batches("caption_ids", QUERY_PIDS, 8, query_order)
  row = evaluator.evaluate({}, images, texts)
  for k, v in expected.items():
    assert row[k] == pytest.approx(v, abs=1e-4), k
  assert row["num_queries"] == len(query_order) and row["num_gallery"] == 4


def test_encode_drops_padding_across_several_batches():
  mesh = sharding.create_mesh()
  evaluator = evaluate.Evaluator(LookupModel(), mesh, params_sharding={})
  order = np.array([3, 1, 0, 2, 1, 3, 0, 2, 2, 0, 1])  # 11 rows → two global batches of 8, 5 padding rows
  pids = np.arange(4, dtype=np.int32) + 10
  emb, got_pids = evaluator.encode({}, _batches("images", pids, 8, order), "images")
  np.testing.assert_array_equal(got_pids, pids[order])
  np.testing.assert_array_equal(np.asarray(emb), np.eye(4, dtype=np.float32)[order])


def test_results_file_and_table(tmp_path):
  rows = {"test": dict(EXPECTED, num_queries=3, num_gallery=4, step=7, checkpoint="best/7")}
  path = evaluate.write_results(str(tmp_path), {"splits": rows})
  assert json.loads(open(path).read())["splits"]["test"]["step"] == 7
  table = evaluate.format_table(rows).splitlines()
  assert table[2].split()[:6] == ["test", "66.667", "100.000", "100.000", "69.444", "61.111"]
