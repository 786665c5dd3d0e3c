"""ranking_losses: batch-all / batch-hard ranking and CMR over every positive of the identity, sum or mean reduction,
against the float64 loops of numpy_reference; semi_hard + sum is the lineage loss unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import numpy_reference as ref
from test_losses import cmr_case
from tpsearch_jax import objectives, ranking_losses

RANK = jax.jit(ranking_losses.ranking_loss, static_argnames=("mining", "reduction"))
CMR = jax.jit(ranking_losses.cmr_ranking_loss, static_argnames=("commonality", "mining", "reduction"))


def _pair(b=8, d=6, seed=0):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(b, d)).astype(np.float32)
  t = (0.7 * v + rng.normal(size=(b, d))).astype(np.float32)
  y = np.array([0, 0, 1, 2, 2, 2, 3, 1][:b], np.int32)
  return v, t, y


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ranking_matches_reference(mining, reduction):
  v, t, y = _pair()
  want = ref.ranking_all_or_hard(v, t, y, 0.3, mining)
  if reduction == "mean":
    want /= 2 * len(y)
  got = RANK(v, t, y, None, 0.3, mining=mining, reduction=reduction)
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
  assert want > 0.05


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
def test_ranking_padding_rows_are_the_valid_sub_batch(mining):
  v, t, y = _pair()
  valid = np.array([1, 1, 1, 0, 1, 1, 0, 1], bool)
  v[~valid], t[~valid] = 0.0, np.nan  # padding contents must not matter
  got = RANK(v, t, y, None, 0.2, mining=mining, reduction="mean", valid=valid)
  np.testing.assert_allclose(float(got), ref.ranking_all_or_hard(v, t, y, 0.2, mining, valid=valid) / (2 * 6),
                             rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda a, b: ranking_losses.ranking_loss(a, b, y, None, 0.2, mining, "sum", valid=valid),
                   argnums=(0, 1))(v, t)
  for g in grads:
    assert np.all(np.isfinite(g)) and not np.any(g[~valid])


def test_semi_hard_is_the_lineage_loss_and_mean_divides_by_anchors():
  v, t, y = _pair()
  key = jax.random.key(5)
  # Both compiled: eager op-by-op evaluation rounds differently from a fused program in the last bit.
  lineage = float(jax.jit(ranking_losses.triplet_ranking_loss)(v, t, y, key, margin=0.2))
  assert float(RANK(v, t, y, key, 0.2, mining="semi_hard", reduction="sum")) == lineage
  np.testing.assert_allclose(float(RANK(v, t, y, key, 0.2, mining="semi_hard", reduction="mean")), lineage / 16,
                             rtol=1e-6)


def test_single_identity_batch_gives_zero_with_finite_gradient():
  v, t, _ = _pair()
  y = np.zeros(8, np.int32)
  for mining in ("batch_all", "batch_hard"):
    loss, g = jax.value_and_grad(lambda a: ranking_losses.ranking_loss(a, t, y, None, 0.2, mining))(v)
    assert float(loss) == 0.0 and np.all(np.isfinite(g))


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
@pytest.mark.parametrize("commonality", ["prob", "freq"])
def test_cmr_matches_reference(mining, commonality):
  b, p, d, k, m, tau = 8, 3, 6, 5, 0.2, 0.2
  vp, tp, y, li, lt, sc_i, sc_t = cmr_case(b, p, d, k, 3, tau, commonality)
  want = ref.cmr_all_or_hard(vp, tp, y, m, 0.05, sc_i, sc_t, mining)
  for reduction, scale in (("sum", 1.0), ("mean", 1.0 / (2 * b * p))):
    got = CMR(vp, tp, y, None, m, 0.05, commonality, li, lt, tau, mining=mining, reduction=reduction)
    np.testing.assert_allclose(float(got), want * scale, rtol=1e-5, atol=1e-7)


def test_unknown_mining_or_reduction_names_the_field():
  v, t, y = _pair()
  with pytest.raises(ValueError, match="config.loss.ranking_mining must be one of"):
    ranking_losses.ranking_loss(v, t, y, None, mining="hardest")
  with pytest.raises(ValueError, match="config.loss.ranking_reduction must be one of"):
    ranking_losses.cmr_ranking_loss(v[:, None], t[:, None], y, None, commonality="freq", reduction="avg")


def test_objective_wiring_of_mining_and_reduction():
  rng = np.random.default_rng(7)
  b, g, p, d = 8, 2, 3, 6
  y = np.arange(b, dtype=np.int32) % 3
  emb = {k: rng.normal(size=(2, b) + s + (d,)).astype(np.float32) for k, s in
         (("global", ()), ("coarse", (g,)), ("part", (p,)))}
  outputs = {side: {k: emb[k][i] for k in emb} for i, side in enumerate(("image", "text"))}
  opts = objectives.LossOptions(triplet=1.0, cmr=1.0, cmr_commonality="freq", cmr_tau=0.2,
                                ranking_mining="batch_hard", ranking_reduction="mean")
  _, terms = objectives.compute_losses(outputs, {"pids": y}, opts, jax.random.key(0))
  pieces = [(emb["global"][0], emb["global"][1])] + [(emb["coarse"][0][:, j], emb["coarse"][1][:, j]) for j in range(g)]
  want = np.mean([ref.ranking_all_or_hard(v, t, y, 0.2, "batch_hard") / (2 * b) for v, t in pieces])
  np.testing.assert_allclose(float(terms["triplet"]), want, rtol=1e-5)
  sc_i, sc_t = ref.commonality_freq(emb["part"][0], y, 0.2), ref.commonality_freq(emb["part"][1], y, 0.2)
  want = ref.cmr_all_or_hard(emb["part"][0], emb["part"][1], y, 0.2, 0.05, sc_i, sc_t, "batch_hard") / (2 * b * p)
  np.testing.assert_allclose(float(terms["cmr"]), want, rtol=1e-5)
  with pytest.raises(ValueError, match="config.loss.ranking_mining"):
    objectives.check_loss_options(objectives.LossOptions(triplet=1.0, ranking_mining="x"), use_parts=True)


def test_id_on_the_global_piece_only():
  rng = np.random.default_rng(8)
  b, m, k = 6, 4, 5
  y = np.array([0, 1, 2, 0, 3, 4], np.int32)
  li, lt = (rng.normal(size=(b, m, k)).astype(np.float32) for _ in range(2))
  outputs = {"image": {"global": np.ones((b, 2), np.float32)}, "text": {"global": np.ones((b, 2), np.float32)},
             "image_logits": li, "text_logits": lt}
  for pieces, n in (("all", m), ("global", 1)):
    _, terms = objectives.compute_losses(outputs, {"pids": y}, objectives.LossOptions(id=1.0, id_pieces=pieces),
                                         jax.random.key(0))
    want = ref.id_loss(li[:, :n].reshape(-1, k), lt[:, :n].reshape(-1, k), np.repeat(y, n))
    np.testing.assert_allclose(float(terms["id"]), want, rtol=1e-5)
  with pytest.raises(ValueError, match="config.loss.id_pieces"):
    objectives.check_loss_options(objectives.LossOptions(id=1.0, id_pieces="coarse"), use_parts=True)
