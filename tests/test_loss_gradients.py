"""Gradients of every objective against an independent derivation: ``jax.grad`` (float32) vs float64 central
differences of the numpy reference (tests/numpy_reference.py) on tiny inputs, with padded text positions, ignored MLM
labels and padded batch rows (whose gradient must be exactly 0).

The two documented gradient choices have a test that fails when flipped: A-SDM's weight is NOT detached (the
difference quotient of the reference differentiates it; a detached weight's gradient is shown to lie far away), and
CMR's commonality score IS stop-gradient (no gradient reaches the part logits, although the reference's score moves
with them).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import numpy_reference as ref
from test_losses import _picker
from tpsearch_jax import losses, ranking_losses

MINE = jax.jit(ranking_losses.mine_semi_hard_negatives)
Y = np.array([3, 1, 3, 0, 1], np.int32)  # duplicates: same-id positives off the diagonal


def _feats(seed, b, d, corr=0.3):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(b, d)).astype(np.float32)
  return v, (corr * v + rng.normal(size=(b, d))).astype(np.float32)


def _assert_grad(got, want, rtol=2e-3):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert np.all(np.isfinite(got)) and np.abs(want).max() > 1e-3, "a vanishing gradient checks nothing"
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@functools.cache
def _grad(fn, argnums=(0, 1)):
  return jax.jit(jax.grad(fn, argnums=argnums))


def _check(fn, reference, args, argnums=(0, 1), rtol=2e-3):
  """jax.grad of fn(*args) w.r.t. each of ``argnums`` vs central differences of reference(*args) (float64)."""
  grads = _grad(fn, argnums)(*args)
  for i, g in zip(argnums, grads):
    want = ref.central_difference(lambda x: reference(*args[:i], x, *args[i + 1:]), args[i])
    _assert_grad(g, want, rtol)


# ------------------------------------------------------------------------------------------------ SDM family, ID, MLM


def _sdm(v, t, y):
  return losses.sdm_loss(v, t, y)


def _asdm_cos(v, t, y):
  return losses.asdm_loss(v, t, y, alpha=0.5)


def _asdm_prob(v, t, y):
  return losses.asdm_loss(v, t, y, 20.0, 10.0, "prob")


def _itc(v, t, y):
  return losses.itc_loss(v, t, 20.0)


def _gap_case():
  v, t = _feats(1, len(Y), 6)
  v[2] = 3.0 * t[0]  # text 0's best image is 2: same id, not the first same-id row → a non-zero cosine gap
  return v, t


def test_sdm_and_itc_gradients():
  v, t = _feats(0, len(Y), 6)
  _check(_sdm, ref.sdm, (v, t, Y))
  _check(_itc, lambda a, c, y: ref.itc(a, c, 20.0), (v, t, Y))


@pytest.mark.parametrize("gap", ["cosine", "prob"])
def test_asdm_gradient_flows_through_its_weight(gap):
  """The released code does not detach w = 1 + α·gap: the gradient includes ∂w/∂features."""
  v, t = _gap_case()
  kw = dict(alpha=0.5) if gap == "cosine" else dict(s=20.0, alpha=10.0, gap="prob")
  fn = _asdm_cos if gap == "cosine" else _asdm_prob
  weights = ref.asdm_weights(v, t, Y, **kw)
  assert np.ptp(np.concatenate(weights)) > 0.05  # the weights differ between rows
  full = [ref.central_difference(lambda x: ref.asdm(x, t, Y, **kw), v),
          ref.central_difference(lambda x: ref.asdm(v, x, Y, **kw), t)]
  detached = [ref.central_difference(lambda x: ref.asdm(x, t, Y, **kw, weights=weights), v),
              ref.central_difference(lambda x: ref.asdm(v, x, Y, **kw, weights=weights), t)]
  got = _grad(fn)(v, t, Y)
  for g, f, d in zip(got, full, detached):
    _assert_grad(g, f)
    assert np.abs(f - d).max() > 0.05 * np.abs(f).max(), "the weight's gradient is too small to tell"


def test_id_and_mlm_gradients_with_ignored_labels():
  rng = np.random.default_rng(2)
  li, lt = (3 * rng.normal(size=(5, 4))).astype(np.float32), (3 * rng.normal(size=(5, 4))).astype(np.float32)
  _check(lambda a, c, y: losses.id_loss(a, c, y), ref.id_loss, (li, lt, Y))
  logits = (2 * rng.normal(size=(2, 5, 6))).astype(np.float32)
  labels = np.array([[0, 2, 0, 5, 1], [3, 0, 0, 0, 4]], np.int32)
  g = _grad(lambda x, y: losses.mlm_loss(x, y), (0,))(logits, labels)[0]
  _assert_grad(g, ref.central_difference(lambda x: ref.mlm(x, labels), logits))
  assert not np.any(np.asarray(g)[labels == 0]), "an ignored position received gradient"


# ------------------------------------------------------------------------------------------------ EFA


def _tokens(seed, b=3, lt=3, n=4, d=3):
  rng = np.random.default_rng(seed)
  shared = 2.0 * rng.normal(size=(b, 1, d))
  noise = np.linspace(0.5, 2.0, b)[:, None, None]
  return ((shared + noise * rng.normal(size=(b, lt, d))).astype(np.float32),
          (shared + noise * rng.normal(size=(b, n, d))).astype(np.float32))


def _efa_released(t, v, mask):
  return losses.efa_loss(t, v, 0.1, 0.9, text_mask=mask)


def _efa_paper(t, v, mask):
  return losses.efa_loss(t, v, 0.2, 0.8, arithmetic="paper")


@pytest.mark.parametrize("case", ["released", "released_masked", "paper"])
def test_efa_gradients(case):
  t, v = _tokens(3)
  if case == "released_masked":
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)
    t[~mask] = 5.0  # what a padded position holds must not matter
    _check(_efa_released, lambda a, c, m: ref.efa(a, c, 0.1, 0.9, mask=m), (t, v, mask))
    g = _grad(_efa_released)(t, v, mask)[0]
    assert not np.any(np.asarray(g)[~mask]), "a padded text position received gradient"
  elif case == "released":
    _check(_efa_released, lambda a, c, m: ref.efa(a, c, 0.1, 0.9), (t, v, None))
  else:
    _check(_efa_paper, lambda a, c, m: ref.efa_paper(a, c, 0.2, 0.8), (t, v, None))


# ------------------------------------------------------------------------------------------------ ranking


def _picks(v, t, y, key, m=0.2):
  k_img, k_txt = jax.random.split(key)
  s = ref.cosine_eps(v, t).astype(np.float32)
  return dict(pick_img=_picker(MINE(s, y, k_img, m)[0]), pick_txt=_picker(MINE(s.T, y, k_txt, m)[0]))


def _ranking_batch(seed=7, b=10, d=6):
  v, t = _feats(seed, b, d, corr=0.8)
  return v, t, np.arange(b, dtype=np.int32) % 4


def _triplet(v, t, y, key):
  return ranking_losses.triplet_ranking_loss(v, t, y, key)


def test_triplet_gradient_with_the_drawn_negatives_held():
  v, t, y = _ranking_batch()
  key = jax.random.key(1)
  picks = _picks(v, t, y, key)
  _check(_triplet, lambda a, c, yy, k: ref.triplet(a, c, yy, 0.2, **picks), (v, t, y, key))


def _parts(seed=4, b=8, p=2, d=4, k=4):
  rng = np.random.default_rng(seed)
  vp = rng.normal(size=(b, p, d)).astype(np.float32)
  tp = (0.8 * vp + rng.normal(size=(b, p, d))).astype(np.float32)
  y = np.arange(b, dtype=np.int32) % k
  li, lt = (rng.normal(size=(b, p, k)) for _ in range(2))
  for logits in (li, lt):  # confident on some anchors: margins above the floor, so the score matters
    logits[np.arange(b), :, y] += np.linspace(-1.0, 4.0, b)[:, None]
  return vp, tp, y, li.astype(np.float32), lt.astype(np.float32)


def _cmr(vp, tp, y, key, li, lt):
  return ranking_losses.cmr_loss(vp, tp, y, key, 0.2, 0.05, image_part_logits=li, text_part_logits=lt)


def _cmr_reference(vp, tp, y, key, li, lt):
  picks = []
  for i, kp in enumerate(jax.random.split(key, vp.shape[1])):
    picks.append(tuple(_picks(vp[:, i], tp[:, i], y, kp).values()))
  return functools.partial(ref.cmr, m=0.2, floor=0.05, picks=picks)


def test_cmr_gradient_holds_the_commonality_score_constant():
  """∂L/∂parts with the score held (stop-gradient), and exactly no gradient into the part logits; the reference's
  loss does move with the logits, so a score that is not stop-gradient would show."""
  vp, tp, y, li, lt = _parts()
  key = jax.random.key(2)
  cmr = _cmr_reference(vp, tp, y, key, li, lt)
  sc_i, sc_t = ref.commonality_prob(li, y), ref.commonality_prob(lt, y)
  assert np.mean(0.2 * sc_i > 0.05) > 0.3 and np.mean(0.2 * sc_t > 0.05) > 0.3  # scores above the floor
  g = _grad(_cmr, (0, 1, 4, 5))(vp, tp, y, key, li, lt)
  _assert_grad(g[0], ref.central_difference(lambda x: cmr(x, tp, y, score_img=sc_i, score_txt=sc_t), vp))
  _assert_grad(g[1], ref.central_difference(lambda x: cmr(vp, x, y, score_img=sc_i, score_txt=sc_t), tp))
  assert not np.any(np.asarray(g[2])) and not np.any(np.asarray(g[3])), "gradient reached the commonality logits"
  moving = ref.central_difference(lambda x: cmr(vp, tp, y, score_img=ref.commonality_prob(x, y), score_txt=sc_t), li)
  assert np.abs(moving).max() > 1e-3


# ------------------------------------------------------------------------------------------------ padded rows


def _masked(name):
  return {"sdm": lambda a, c, y, valid, key: losses.sdm_loss(a, c, y, valid=valid),
          "asdm": lambda a, c, y, valid, key: losses.asdm_loss(a, c, y, alpha=0.5, valid=valid),
          "itc": lambda a, c, y, valid, key: losses.itc_loss(a, c, 20.0, valid=valid),
          "triplet": lambda a, c, y, valid, key: ranking_losses.triplet_ranking_loss(a, c, y, key, valid=valid)}[name]


MASKED = {name: _masked(name) for name in ("sdm", "asdm", "itc", "triplet")}


@pytest.mark.parametrize("name", list(MASKED))
def test_padded_rows_get_zero_gradient_and_valid_rows_the_sub_batch_gradient(name):
  v, t, y = _ranking_batch(seed=5, b=8)
  if name == "asdm":
    v[2] = 3.0 * t[0]
    y = np.array([3, 1, 3, 0, 1, 2, 0, 2], np.int32)
  rows = np.array([0, 8, 1, 2, 9, 3, 4, 5, 6, 7, 10])  # 8, 9, 10: padding rows (random, ids shared)
  valid = rows < 8
  rng = np.random.default_rng(6)
  pad = lambda x: np.concatenate([x, 2 * rng.normal(size=(3, x.shape[1]))]).astype(np.float32)[rows]  # noqa: E731
  a, c, y_pad = pad(v), pad(t), np.concatenate([y, y[:3]])[rows].astype(np.int32)
  key = jax.random.key(4)
  reference = {"sdm": lambda a_, c_: ref.sdm(a_, c_, y), "itc": lambda a_, c_: ref.itc(a_, c_, 20.0),
               "asdm": lambda a_, c_: ref.asdm(a_, c_, y, alpha=0.5)}
  if name == "triplet":
    picks = _picks(v, t, y, key)
    reference["triplet"] = lambda a_, c_: ref.triplet(a_, c_, y, 0.2, **picks)
  g = _grad(MASKED[name])(a, c, y_pad, valid, key)
  for i, (gi, x) in enumerate(zip(g, (v, t))):
    gi = np.asarray(gi)
    assert not np.any(gi[~valid]), "a padding row received gradient"
    other = (v, t)[1 - i]
    want = ref.central_difference(lambda z: reference[name](*((z, other) if i == 0 else (other, z))), x)
    _assert_grad(gi[valid], want)
