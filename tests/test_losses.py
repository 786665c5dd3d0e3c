"""Objectives vs independent float64 numpy re-derivations (tests/numpy_reference.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from tpsearch_jax import losses, ranking_losses

RTOL = 1e-5

# One jitted callable per objective, shared by all tests so compilations are reused (and jit-ability is exercised).
SDM = jax.jit(losses.sdm_loss)
ASDM = jax.jit(losses.asdm_loss, static_argnames=("gap",))
ITC = jax.jit(losses.itc_loss)
ID = jax.jit(losses.id_loss)
MLM = jax.jit(losses.mlm_loss)
EFA = jax.jit(losses.efa_loss, static_argnames=("safe", "row_block", "arithmetic"))
TRIPLET = jax.jit(ranking_losses.triplet_ranking_loss)
MINE = jax.jit(ranking_losses.mine_semi_hard_negatives)
CMR = jax.jit(ranking_losses.cmr_loss, static_argnames=("commonality",))

PID_CASES = {
    "distinct": [0, 1, 2, 3, 4, 5],
    "duplicates": [3, 1, 3, 3, 0, 1],
    "single_pid": [7, 7, 7, 7, 7, 7],
}


def _feats(seed, b, d, corr=0.0):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(b, d)).astype(np.float32)
  t = (corr * v + rng.normal(size=(b, d))).astype(np.float32)
  return v, t


def _pids(name, b):
  base = PID_CASES[name]
  return np.asarray([base[i % len(base)] for i in range(b)], np.int32)


def _close(got, want, rtol=RTOL, atol=0.0):
  assert np.asarray(got).dtype == np.float32 and np.shape(got) == ()
  np.testing.assert_allclose(float(got), float(want), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------ SDM family


@pytest.mark.parametrize("b,d", [(2, 4), (6, 16), (12, 32)])
@pytest.mark.parametrize("pid_case", list(PID_CASES))
def test_sdm_and_asdm_match_reference(b, d, pid_case):
  v, t = _feats(b * d, b, d, corr=0.3)
  y = _pids(pid_case, b)
  _close(SDM(v, t, y), ref.sdm(v, t, y))
  _close(ASDM(v, t, y), ref.asdm(v, t, y))
  _close(ASDM(v, t, y, logit_scale=20.0, alpha=10.0, gap="prob"),
         ref.asdm(v, t, y, s=20.0, alpha=10.0, gap="prob"))


def test_asdm_counts_a_match_to_another_same_id_sample_as_unmatched():
  # Text 0 is closest to image 1 (same id as 0 but not the first same-id index): the released code weights it.
  v, t = _feats(3, 5, 8)
  v[1] = t[0] * 3.0
  y = np.array([2, 2, 0, 1, 4], np.int32)
  _, _, c, first = ref.sdm_rows(v, t, y)
  assert np.argmax(c[0]) == 1 and first[0] == 0
  _close(ASDM(v, t, y, alpha=0.5), ref.asdm(v, t, y, alpha=0.5))
  assert float(ASDM(v, t, y, alpha=0.5)) > float(SDM(v, t, y))


@pytest.mark.parametrize("b", [1, 5, 9])
def test_itc_and_id_match_reference(b):
  v, t = _feats(b, b, 12)
  _close(ITC(v, t, 50.0), ref.itc(v, t, 50.0))
  rng = np.random.default_rng(b)
  li, lt = rng.normal(size=(2, b, 7)).astype(np.float32) * 3
  y = rng.integers(0, 7, size=b).astype(np.int32)
  _close(ID(li, lt, y), ref.id_loss(li, lt, y))


@pytest.mark.parametrize("shape", [(10,), (3, 5)])
def test_mlm_matches_reference(shape):
  rng = np.random.default_rng(len(shape))
  logits = rng.normal(size=shape + (13,)).astype(np.float32) * 4
  labels = rng.integers(0, 13, size=shape).astype(np.int32)
  labels.reshape(-1)[::3] = 0
  _close(MLM(logits, labels), ref.mlm(logits, labels))
  _close(MLM(logits, np.where(labels == 5, 0, labels), ignore_index=0),
         ref.mlm(logits, np.where(labels == 5, 0, labels)))


def test_mlm_without_labels_is_zero_with_finite_gradient():
  logits = jnp.ones((4, 6, 9))
  labels = jnp.zeros((4, 6), jnp.int32)
  assert float(MLM(logits, labels)) == 0.0
  g = jax.jit(jax.grad(losses.mlm_loss))(logits, labels)
  assert np.all(np.isfinite(np.asarray(g)))


# ------------------------------------------------------------------------------------------------ EFA


def _tokens(seed, b, lt, n, d, spread=False):
  """Caption and patch tokens sharing a per-sample component, so S varies across pairs (the row L2-norm of S
  otherwise flattens it and would hide a wrong LSE axis). spread: per-sample noise from 0.3 to 3, so the diagonal of
  S varies too (a wrong anchor axis then moves the loss by ≈ 6e-4 relative, 60× the tolerance)."""
  rng = np.random.default_rng(seed)
  shared = 3.0 * rng.normal(size=(b, 1, d))
  noise = np.linspace(0.3, 3.0, b)[:, None, None] if spread else 1.0
  return ((shared + noise * rng.normal(size=(b, lt, d))).astype(np.float32),
          (shared + noise * rng.normal(size=(b, n, d))).astype(np.float32))


@pytest.mark.parametrize("b,lt,n,d,row_block", [(2, 4, 5, 3, 8), (5, 6, 9, 8, 2)])
def test_efa_matches_reference(b, lt, n, d, row_block):
  t, v = _tokens(b * lt, b, lt, n, d)
  _close(EFA(t, v, row_block=row_block), ref.efa(t, v))
  _close(EFA(t, v, 0.2, 0.8, 0.1, row_block=row_block), ref.efa(t, v, 0.2, 0.8, 0.1))


def test_efa_text_mask_matches_reference():
  t, v = _tokens(11, 4, 7, 9, 8)
  mask = np.ones((4, 7), bool)
  mask[:, 5:] = False
  mask[2, 3:] = False
  _close(EFA(t, v, text_mask=mask, row_block=3), ref.efa(t, v, mask=mask))
  # padded positions really are ignored: changing them leaves the loss unchanged
  t2 = t.copy()
  t2[~mask] = 100.0
  _close(EFA(t2, v, text_mask=mask, row_block=3), ref.efa(t, v, mask=mask))


def test_efa_constant_batch_gives_the_documented_init_value():
  # Identical samples make S constant, so after the row L2-norm each LSE is log(1 + (B−1)e^m).
  t, v = _tokens(5, 1, 3, 4, 5)
  b = 64
  got = EFA(np.repeat(t, b, 0), np.repeat(v, b, 0))
  want = 2 * math.log(1 + (b - 1) * math.exp(0.1)) + 2 * math.log(1 + (b - 1) * math.exp(0.9))
  _close(got, want)
  assert abs(want - 18.61) < 0.01


@pytest.mark.parametrize("b,lt,n,d,margins", [(2, 4, 5, 3, (0.1, 0.1)), (5, 6, 9, 8, (0.2, 1.0)),
                                              (4, 5, 7, 6, (0.2, 0.8))])
def test_efa_paper_arithmetic_matches_the_paper_equations(b, lt, n, d, margins):
  """arithmetic="paper": ≥ 1/N, no row-L2 of S, per-anchor LSEs (CUHK / ICFG / RSTP margins of the paper)."""
  t, v = _tokens(7 * b + lt, b, lt, n, d, spread=True)
  got = EFA(t, v, *margins, 1.0, arithmetic="paper", row_block=2)
  _close(got, ref.efa_paper(t, v, *margins, lam=1.0))
  # the two arithmetics are really different losses on the same inputs
  assert abs(float(got) - ref.efa(t, v, *margins, 1.0)) > 1e-2


def test_efa_paper_constant_batch_and_defaults():
  # S constant: each per-anchor LSE is log(1 + (B−1)e^m), the same value as the released arithmetic's.
  t, v = _tokens(5, 1, 3, 4, 5)
  b = 16
  want = 2 * math.log(1 + (b - 1) * math.exp(0.2)) + 2 * math.log(1 + (b - 1) * math.exp(0.8))
  _close(EFA(np.repeat(t, b, 0), np.repeat(v, b, 0), 0.2, 0.8, arithmetic="paper"), want)
  t, v = _tokens(3, 3, 4, 5, 6)  # the defaults stay the released arithmetic
  _close(EFA(t, v), ref.efa(t, v))
  with pytest.raises(ValueError, match="arithmetic"):
    losses.efa_loss(t, v, arithmetic="eq7")


@pytest.mark.parametrize("arithmetic", ["released", "paper"])
def test_efa_valid_mask_equals_the_loss_of_the_valid_rows(arithmetic):
  """A padded short batch (data.drop_last=False): the masked loss is the loss of the real rows alone."""
  t, v = _tokens(13, 6, 5, 7, 6)
  valid = np.array([1, 1, 0, 1, 1, 0], bool)
  t[~valid], v[~valid] = t[0], v[0]  # padding repeats real rows, as the sampler does
  real = ref.efa(t[valid], v[valid], 0.2, 0.8) if arithmetic == "released" else ref.efa_paper(
      t[valid], v[valid], 0.2, 0.8)
  got = EFA(t, v, 0.2, 0.8, valid=valid, arithmetic=arithmetic, row_block=4)
  _close(got, real)
  grads = jax.grad(lambda a, c: losses.efa_loss(a, c, 0.2, 0.8, valid=valid, arithmetic=arithmetic),
                   argnums=(0, 1))(t, v)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g)[~valid])


def test_efa_safe_flag_handles_constant_rows():
  t, v = _tokens(2, 3, 4, 5, 6)
  v[1] = 0.0  # every dot product of pair 1 is 0 -> constant rows in the min-max
  assert np.isnan(float(EFA(t, v)))  # the reference arithmetic
  assert np.isfinite(float(EFA(t, v, safe=True)))


# ------------------------------------------------------------------------------------------------ ranking


def _feats_with_similarity(s):
  """v_a = e_a and t_b = (S[:, b], filler) so that cos(v_a, t_b) = S_ab (columns need norm ≤ 1)."""
  s = np.asarray(s, np.float64)
  b = s.shape[0]
  col = np.sum(s * s, axis=0)
  assert np.all(col < 1)
  v = np.eye(b, b + 1)
  t = np.concatenate([s.T, np.sqrt(1 - col)[:, None]], axis=1)
  return v.astype(np.float32), t.astype(np.float32)


def _designed(entries, b=6, diag=0.4, easy=0.05):
  s = np.full((b, b), easy)
  np.fill_diagonal(s, diag)
  for (i, j), val in entries.items():
    s[i, j] = val
  return s


Y6 = np.array([0, 0, 1, 2, 2, 3], np.int32)
ONE_CANDIDATE = {(0, 2): 0.3, (3, 5): 0.3, (5, 1): 0.3, (2, 4): 0.7, (0, 1): 0.3}
FALLBACK = {(5, 0): 0.7}
ONE_DIRECTION = {(1, 3): 0.3, (3, 3): 0.7, (0, 5): 0.65}  # text anchors fall back


@pytest.mark.parametrize("entries", [ONE_CANDIDATE, FALLBACK, ONE_DIRECTION], ids=["one", "fallback", "one_dir"])
def test_triplet_deterministic_cases_match_reference(entries):
  v, t = _feats_with_similarity(_designed(entries))
  sets = ref.semi_hard_sets(ref.cosine_eps(v, t), Y6, 0.2) + ref.semi_hard_sets(ref.cosine_eps(t, v), Y6, 0.2)
  assert max(len(c) for c in sets) <= 1
  want = ref.triplet(v, t, Y6, 0.2)
  assert want > 0
  for seed in range(3):
    _close(TRIPLET(v, t, Y6, jax.random.key(seed)), want)
  hinge = (np.linspace(0.1, 0.4, 6).astype(np.float32), np.linspace(0.3, 0.05, 6).astype(np.float32))
  _close(TRIPLET(v, t, Y6, jax.random.key(0), hinge_margins=hinge),
         ref.triplet(v, t, Y6, 0.2, hinge=hinge))


def test_triplet_single_identity_batch_is_zero():
  v, t = _feats(1, 5, 8, corr=1.0)
  y = np.zeros(5, np.int32)
  assert float(TRIPLET(v, t, y, jax.random.key(0))) == 0.0
  assert ref.triplet(v, t, y) == 0.0


def _picker(neg):
  def pick(a, cands):
    assert int(neg[a]) in cands, f"anchor {a}: picked {int(neg[a])} outside the semi-hard set {cands}"
    return int(neg[a])
  return pick


def test_triplet_random_picks_are_semi_hard_and_loss_matches():
  b, m = 16, 0.2
  v, t = _feats(7, b, 8, corr=0.8)
  y = np.arange(b, dtype=np.int32) % 5
  s = ref.cosine_eps(v, t)
  sets = ref.semi_hard_sets(s, y, m)
  assert sum(len(c) >= 2 for c in sets) >= 3  # the draw matters for several anchors
  for seed in range(5):
    key = jax.random.key(seed)
    k_img, k_txt = jax.random.split(key)
    neg_i, found_i = MINE(s.astype(np.float32), y, k_img, m)
    neg_t, found_t = MINE(s.T.astype(np.float32), y, k_txt, m)
    assert list(np.asarray(found_i)) == [bool(c) for c in sets]
    assert list(np.asarray(found_t)) == [bool(c) for c in ref.semi_hard_sets(s.T, y, m)]
    got = TRIPLET(v, t, y, key, m)
    _close(got, ref.triplet(v, t, y, m, pick_img=_picker(neg_i), pick_txt=_picker(neg_t)))
    assert float(got) == float(TRIPLET(v, t, y, key, m))


def test_semi_hard_pick_is_uniform_over_candidates():
  s = _designed({(0, 2): 0.3, (0, 3): 0.25, (0, 5): 0.35, (0, 4): 0.7})
  keys = jax.random.split(jax.random.key(0), 3000)
  neg, found = jax.jit(jax.vmap(lambda k: ranking_losses.mine_semi_hard_negatives(s, Y6, k, 0.2)))(keys)
  assert bool(np.all(np.asarray(found)[:, 0]))
  counts = np.bincount(np.asarray(neg)[:, 0], minlength=6)
  assert counts[[0, 1, 4]].sum() == 0
  assert np.all((counts[[2, 3, 5]] > 850) & (counts[[2, 3, 5]] < 1150)), counts


def cmr_case(b: int, p: int, d: int, k: int, num_ids: int, tau: float, commonality: str):
  """A CMR test case: part embeddings vp, tp [b, p, d] (correlated), ids y [b] (``num_ids`` of them), part logits
  li, lt [b, p, k], and the numpy reference commonality scores sc_i, sc_t of ``commonality``."""
  rng = np.random.default_rng(4)
  vp = rng.normal(size=(b, p, d)).astype(np.float32)
  tp = (0.8 * vp + rng.normal(size=(b, p, d))).astype(np.float32)
  y = np.arange(b, dtype=np.int32) % num_ids
  li, lt = (rng.normal(size=(b, p, k)).astype(np.float32) * 2 for _ in range(2))
  if commonality == "prob":
    sc_i, sc_t = ref.commonality_prob(li, y), ref.commonality_prob(lt, y)
  else:
    sc_i, sc_t = ref.commonality_freq(vp, y, tau), ref.commonality_freq(tp, y, tau)
  return vp, tp, y, li, lt, sc_i, sc_t


@pytest.mark.parametrize("commonality", ["prob", "freq"])
def test_cmr_matches_reference(commonality):
  b, p, d, k, m, tau = 10, 3, 8, 5, 0.2, 0.2
  vp, tp, y, li, lt, sc_i, sc_t = cmr_case(b, p, d, k, 4, tau, commonality)
  assert np.ptp(sc_i) > 0.1 and np.ptp(sc_t) > 0.1
  key = jax.random.key(3)
  picks = []
  for i, kp in enumerate(jax.random.split(key, p)):
    k_img, k_txt = jax.random.split(kp)
    s = ref.cosine_eps(vp[:, i], tp[:, i]).astype(np.float32)
    picks.append((_picker(MINE(s, y, k_img, m)[0]), _picker(MINE(s.T, y, k_txt, m)[0])))
  got = CMR(vp, tp, y, key, m, commonality=commonality, image_part_logits=li, text_part_logits=lt, tau=tau)
  _close(got, ref.cmr(vp, tp, y, m, 0.05, sc_i, sc_t, picks))


def test_cmr_requires_logits_for_prob():
  vp = np.ones((4, 2, 3), np.float32)
  with pytest.raises(ValueError, match="image_part_logits"):
    ranking_losses.cmr_loss(vp, vp, np.arange(4), jax.random.key(0))


# ------------------------------------------------------------------------------------------------ all losses


def _all_losses(seed=0):
  """(name, fn, float inputs tuple, numpy reference on those inputs) for every objective."""
  b, d = 6, 8
  v, t = _feats(seed, b, d, corr=0.8)
  y = _pids("duplicates", b)
  rng = np.random.default_rng(seed)
  li, lt = rng.normal(size=(2, b, 7)).astype(np.float32)
  mlm_logits = rng.normal(size=(b, 4, 11)).astype(np.float32)
  mlm_labels = rng.integers(0, 11, size=(b, 4)).astype(np.int32)
  tt, vv = _tokens(seed, 3, 5, 6, 4)
  mask = np.array([[1, 1, 1, 0, 0]] * 3, bool)
  key = jax.random.key(seed)
  return [
      ("sdm", lambda a, c: losses.sdm_loss(a, c, y), (v, t), lambda a, c: ref.sdm(a, c, y)),
      ("asdm", lambda a, c: losses.asdm_loss(a, c, y), (v, t), lambda a, c: ref.asdm(a, c, y)),
      ("asdm_prob", lambda a, c: losses.asdm_loss(a, c, y, alpha=10.0, gap="prob"), (v, t),
       lambda a, c: ref.asdm(a, c, y, alpha=10.0, gap="prob")),
      ("itc", lambda a, c: losses.itc_loss(a, c, 50.0), (v, t), lambda a, c: ref.itc(a, c, 50.0)),
      ("id", lambda a, c: losses.id_loss(a, c, y), (li, lt), lambda a, c: ref.id_loss(a, c, y)),
      ("mlm", lambda a: losses.mlm_loss(a, mlm_labels), (mlm_logits,), lambda a: ref.mlm(a, mlm_labels)),
      ("efa", lambda a, c: losses.efa_loss(a, c), (tt, vv), lambda a, c: ref.efa(a, c)),
      ("efa_mask", lambda a, c: losses.efa_loss(a, c, text_mask=mask), (tt, vv), lambda a, c: ref.efa(a, c, mask=mask)),
      ("efa_paper", lambda a, c: losses.efa_loss(a, c, 0.2, 1.0, arithmetic="paper"), (tt, vv),
       lambda a, c: ref.efa_paper(a, c, 0.2, 1.0)),
      ("triplet", lambda a, c: ranking_losses.triplet_ranking_loss(a, c, y, key), (v, t), None),
      ("cmr", lambda a, c: ranking_losses.cmr_loss(a[:, None], c[:, None], y, key, commonality="freq"), (v, t), None),
  ]


@pytest.mark.parametrize("case", _all_losses(), ids=lambda c: c[0])
def test_gradients_are_finite_and_nonzero(case):
  _, fn, inputs, _ = case
  grads = jax.jit(jax.grad(fn, argnums=tuple(range(len(inputs)))))(*inputs)
  for g in grads:
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    assert np.any(g != 0)


@pytest.mark.parametrize("case", _all_losses(1), ids=lambda c: c[0])
def test_bfloat16_inputs_are_computed_in_float32(case):
  name, fn, inputs, reference = case
  low = tuple(jnp.asarray(x, jnp.bfloat16) for x in inputs)
  fn = jax.jit(fn)
  got = fn(*low)
  assert got.dtype == jnp.float32 and got.shape == ()
  rounded = tuple(np.asarray(x.astype(jnp.float32)) for x in low)
  if reference is not None:
    _close(got, reference(*rounded))
  else:
    _close(got, fn(*rounded))


def test_sdm_vmap_over_batches():
  stack_v, stack_t = _feats(5, 18, 8)
  stack_v, stack_t = stack_v.reshape(3, 6, 8), stack_t.reshape(3, 6, 8)
  y = _pids("duplicates", 6)
  got = jax.jit(jax.vmap(losses.sdm_loss, in_axes=(0, 0, None)))(stack_v, stack_t, y)
  for i in range(3):
    np.testing.assert_allclose(float(got[i]), ref.sdm(stack_v[i], stack_t[i], y), rtol=RTOL)


def test_shape_errors_name_the_argument():
  v = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match="pids"):
    losses.sdm_loss(v, v, np.arange(5))
  with pytest.raises(ValueError, match="text_mask"):
    losses.efa_loss(np.ones((2, 3, 4)), np.ones((2, 5, 4)), text_mask=np.ones((2, 4), bool))
  with pytest.raises(ValueError, match="gap"):
    losses.asdm_loss(v, v, np.arange(4), gap="logit")
