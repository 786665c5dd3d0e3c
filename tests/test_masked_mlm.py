"""The masked-position MLM head equals the full head (loss, accuracy and gradients) on every batch: none, few and
many labelled positions, including batches that overflow the capacity (exact fallback)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpsearch_jax import masked_mlm

B, L, W, V = 8, 12, 16, 50


def _head(params, h):
  return jnp.tanh(h @ params["w1"]) @ params["w2"] + params["b"]


def _inputs(select_prob: float, seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {"w1": rng.normal(size=(W, W)).astype(np.float32), "w2": rng.normal(size=(W, V)).astype(np.float32),
            "b": rng.normal(size=(V,)).astype(np.float32)}
  hidden = rng.normal(size=(B, L, W)).astype(np.float32)
  labels = np.where(rng.random((B, L)) < select_prob, rng.integers(1, V, (B, L)), 0).astype(np.int32)
  return jax.tree.map(jnp.asarray, params), jnp.asarray(hidden), jnp.asarray(labels)


def _numpy_reference(params, hidden, labels):
  """Full-vocabulary CE and accuracy at the labelled positions, float64."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  logits = np.tanh(np.asarray(hidden, np.float64) @ p["w1"]) @ p["w2"] + p["b"]
  lab = np.asarray(labels)
  on = lab != 0
  if not on.any():
    return 0.0, 0.0
  z = logits[on]
  ce = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1) - z[np.arange(len(z)), lab[on]]
  return ce.mean(), np.mean(z.argmax(-1) == lab[on])


def _loss_and_grads(head, fraction, params, hidden, labels):
  def f(p, h):
    loss, acc = masked_mlm.mlm_terms(h, labels, lambda x: _head(p, x), head=head, fraction=fraction, group_rows=4)
    return loss, acc
  (loss, acc), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, hidden)
  return loss, acc, grads


@pytest.mark.parametrize("select_prob, fraction, expect_fits", [
    (0.0, 0.25, True),  # no labelled position: loss 0
    (0.05, 0.25, True),  # few
    (0.15, 0.25, True),  # the recipe's rate
    (0.6, 0.25, False),  # many: overflows the capacity → full-head fallback
    (0.3, 0.02, False),  # tiny capacity
])
def test_masked_head_equals_full_head(select_prob, fraction, expect_fits):
  params, hidden, labels = _inputs(select_prob)
  _, _, fits = masked_mlm.select_labelled(hidden, labels, 4, fraction)
  assert bool(fits) == expect_fits
  want_loss, want_acc = _numpy_reference(params, hidden, labels)
  full = _loss_and_grads("full", fraction, params, hidden, labels)
  masked = _loss_and_grads("masked", fraction, params, hidden, labels)
  np.testing.assert_allclose(full[0], want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(full[1], want_acc, atol=1e-7)
  np.testing.assert_allclose(masked[0], want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(masked[1], want_acc, atol=1e-7)
  for g_masked, g_full in zip(jax.tree.leaves(masked[2]), jax.tree.leaves(full[2])):
    np.testing.assert_allclose(g_masked, g_full, rtol=1e-4, atol=1e-6)
  if select_prob:
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(masked[2]))


def test_selection_keeps_labelled_positions_in_order():
  _, hidden, labels = _inputs(0.2, seed=3)
  rows, picked, fits = masked_mlm.select_labelled(hidden, labels, 4, 0.5)
  assert fits and rows.shape == (2, masked_mlm.capacity(4, L, 0.5), W)
  lab, hid = np.asarray(labels).reshape(2, 4 * L), np.asarray(hidden).reshape(2, 4 * L, W)
  for g in range(2):
    on = np.flatnonzero(lab[g])
    np.testing.assert_array_equal(np.asarray(picked[g])[:len(on)], lab[g, on])
    assert not np.asarray(picked[g])[len(on):].any()
    np.testing.assert_array_equal(np.asarray(rows[g])[:len(on)], hid[g, on])


def test_group_size_divides_the_batch():
  assert masked_mlm.group_size(64, 8) == 8 and masked_mlm.group_size(12, 8) == 6 and masked_mlm.group_size(7, 8) == 7
  assert masked_mlm.group_size(13, 8) == 1


def test_sharded_masked_head_matches_one_device():
  params, hidden, labels = _inputs(0.15, seed=5)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  one = _loss_and_grads("masked", 0.25, params, hidden, labels)
  two = _loss_and_grads("masked", 0.25, params, jax.device_put(hidden, sharded), jax.device_put(labels, sharded))
  np.testing.assert_allclose(two[0], one[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(two[2]), jax.tree.leaves(one[2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_unknown_head_is_named():
  params, hidden, labels = _inputs(0.1)
  with pytest.raises(ValueError, match="config.loss.mlm_head"):
    masked_mlm.mlm_terms(hidden, labels, lambda x: _head(params, x), head="sparse")


def test_first_argmax_is_argmax_with_ties():
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(6, 40)).astype(np.float32)
  logits[0, [3, 17, 30]] = logits[0].max() + 1.0  # tied maximum: the first index wins
  logits[1, [0, 39]] = logits[1].max() + 1.0
  logits[2] = 0.0  # all equal
  logits[3, 39] = logits[3].max() + 1.0  # the last index
  got = jax.jit(masked_mlm.first_argmax)(jnp.asarray(logits))
  np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
  np.testing.assert_array_equal(got[:4], [3, 0, 0, 39])


def _plain_full_head(params, hidden, labels):
  """The full head on [B, L, W] rows without masked_mlm: plain jnp CE and argmax accuracy at the labelled positions."""
  logits = _head(params, hidden)  # [B, L, V]
  on = labels != 0
  ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
  n = jnp.maximum(jnp.sum(on), 1)
  return jnp.sum(jnp.where(on, ce, 0.0)) / n, jnp.sum((jnp.argmax(logits, -1) == labels) & on) / n


@pytest.mark.parametrize("head", masked_mlm.HEADS)
def test_heads_equal_a_plain_full_head_with_gradients(head):
  params, hidden, labels = _inputs(0.2, seed=11)
  want = jax.jit(jax.value_and_grad(_plain_full_head, argnums=(0, 1), has_aux=True))(params, hidden, labels)
  got = _loss_and_grads(head, 0.25, params, hidden, labels)
  np.testing.assert_allclose(got[0], want[0][0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[0][1], atol=1e-7)
  for g, w in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_masked_branch_carries_no_vocabulary_sized_residual():
  """The differentiated cond returns only small residuals: the fallback's [B·L, V] ones are rematerialised."""
  params, hidden, labels = _inputs(0.15)

  def f(p, h):
    return masked_mlm.mlm_terms(h, labels, lambda x: _head(p, x), head="masked", fraction=0.25, group_rows=4)[0]

  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(params, hidden).jaxpr
  conds = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
  assert conds, "the masked head lost its cond"
  for eqn in conds:
    big = [v.aval.shape for v in eqn.outvars if np.prod(v.aval.shape, dtype=int) >= B * L * V]
    assert not big, f"a cond returns vocabulary-sized values {big}"
