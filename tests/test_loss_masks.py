"""Row masks (the padded short last batch of config.data.drop_last=False): every batch-level loss on a batch padded
from n to B rows with ``valid`` equals the loss of the n valid rows alone, the float64 numpy reference applied to that
sub-batch being the independent reference; the padding rows get exactly zero gradient, whatever they hold."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import numpy_reference as ref
from test_losses import FALLBACK, ONE_CANDIDATE, ONE_DIRECTION, Y6, _designed, _feats_with_similarity, _picker
from tpsearch_jax import losses, objectives, ranking_losses

RTOL = 1e-5
# padding layouts: the sampler's (repeats of the real rows at the end), random rows (ids shared with real rows),
# zero rows (NaN under x/‖x‖ if they were used), and real rows scattered among random padding rows.
LAYOUTS = ("repeat", "random", "zeros", "scattered")


def _layout(name, n, b, seed):
  """→ (row source int [B] (-1 = a fresh padding row), valid bool [B])."""
  rng = np.random.default_rng(seed)
  if name == "scattered":
    valid = np.zeros(b, bool)
    valid[1 + rng.choice(b - 1, n, replace=False)] = True  # row 0 is always padding
  else:
    valid = np.arange(b) < n
  src = np.full(b, -1)
  src[valid] = np.arange(n)
  if name == "repeat":
    src[~valid] = np.arange(b - n) % n
  return src, valid


def _pad(arrays, pids, name, b, seed=0):
  """Pads each [n, ...] array and pids [n] to B rows by ``name`` → (padded arrays, padded pids, valid)."""
  n = len(pids)
  src, valid = _layout(name, n, b, seed)
  rng = np.random.default_rng(seed + 1)
  out = []
  for x in arrays:
    x = np.asarray(x)
    fresh = np.zeros((b,) + x.shape[1:], x.dtype) if name == "zeros" else (
        3.0 * rng.normal(size=(b,) + x.shape[1:])).astype(x.dtype)
    out.append(np.where((src >= 0).reshape((-1,) + (1,) * (x.ndim - 1)), x[np.maximum(src, 0)], fresh))
  fresh_pids = rng.choice(np.asarray(pids), b)  # padding ids collide with real ones: positives must stay invisible
  return out, np.where(src >= 0, np.asarray(pids)[np.maximum(src, 0)], fresh_pids).astype(np.int32), valid


def _close(got, want, rtol=RTOL):
  assert np.asarray(got).dtype == np.float32 and np.shape(got) == ()
  np.testing.assert_allclose(float(got), float(want), rtol=rtol)


@functools.cache
def _grad_fn(fn):
  return jax.jit(jax.grad(fn, argnums=(0, 1)))


def _check_grads(fn, padded_args, sub_args, valid, rtol=1e-4):
  """Gradients of fn(features_a, features_b, ...) w.r.t. both features. Padding rows: exactly 0; valid rows: the
  sub-batch's gradient; everything finite. fn is a module-level function (one compilation per shape)."""
  g_pad = _grad_fn(fn)(*padded_args)
  g_sub = _grad_fn(fn)(*sub_args)
  for gp, gs in zip(g_pad, g_sub):
    gp, gs = np.asarray(gp), np.asarray(gs)
    assert np.all(np.isfinite(gp)) and np.any(gs != 0)
    assert not np.any(gp[~valid]), "a padding row received gradient"
    np.testing.assert_allclose(gp[valid], gs, rtol=rtol, atol=1e-5 * np.abs(gs).max())


# ------------------------------------------------------------------------------------------------ deterministic


def _feats(seed, n, d, corr):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(n, d)).astype(np.float32)
  return v, (corr * v + rng.normal(size=(n, d))).astype(np.float32)


N, B, D, K = 7, 11, 12, 5
Y = np.array([3, 1, 3, 0, 1, 3, 4], np.int32)  # duplicates; ids < K for the classifier

# name → (loss on (a, c, pids, valid), numpy reference on the sub-batch, inputs builder)
DETERMINISTIC = {
    "sdm": (lambda a, c, y, valid=None: losses.sdm_loss(a, c, y, valid=valid), lambda a, c, y: ref.sdm(a, c, y)),
    "asdm_cosine": (lambda a, c, y, valid=None: losses.asdm_loss(a, c, y, alpha=0.5, valid=valid),
                    lambda a, c, y: ref.asdm(a, c, y, alpha=0.5)),
    "asdm_prob": (lambda a, c, y, valid=None: losses.asdm_loss(a, c, y, 20.0, 10.0, "prob", valid=valid),
                  lambda a, c, y: ref.asdm(a, c, y, s=20.0, alpha=10.0, gap="prob")),
    "itc": (lambda a, c, y, valid=None: losses.itc_loss(a, c, 50.0, valid=valid), lambda a, c, y: ref.itc(a, c, 50.0)),
    "id": (lambda a, c, y, valid=None: losses.id_loss(a, c, y, valid=valid), lambda a, c, y: ref.id_loss(a, c, y)),
}


def _det_inputs(name, seed):
  if name == "id":
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(2, N, K)).astype(np.float32) * 3)
  v, t = _feats(seed, N, D, corr=0.3)
  if name == "asdm_cosine":
    v[2] = 3.0 * t[0]  # text 0's best image is 2, same id as 0 but not the first same-id row: a non-zero gap
  return v, t


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_terms_on_a_padded_batch_equal_the_valid_sub_batch(name, layout):
  fn, reference = DETERMINISTIC[name]
  sub = _det_inputs(name, 1)
  (a, c), y, valid = _pad(sub, Y, layout, B, seed=2)
  want = reference(*sub, Y)
  jitted = jax.jit(fn)
  _close(jitted(a, c, y, valid), want)
  _close(jitted(*sub, Y), want)
  _close(jitted(*sub, Y, np.ones(N, bool)), want)  # an all-valid mask is the unmasked loss
  unmasked = float(jitted(a, c, y))
  assert not np.isclose(unmasked, want, rtol=1e-3), "the padding does not change the unmasked loss: test is blind"
  _check_grads(fn, (a, c, y, valid), (*sub, Y, None), valid)


def test_asdm_cosine_first_same_id_row_skips_padding():
  """ℓ (first same-id index) must be the first VALID one: put a padding row with the same id in front."""
  v, t = _feats(5, N, D, corr=0.3)
  v[2] = 3.0 * t[0]
  pad_v, pad_t = _feats(6, 1, D, corr=0.9)
  a, c = np.concatenate([pad_v, v]), np.concatenate([pad_t, t])
  y = np.concatenate([[Y[0]], Y]).astype(np.int32)
  valid = np.arange(N + 1) > 0
  _close(losses.asdm_loss(a, c, y, alpha=0.5, valid=valid), ref.asdm(v, t, Y, alpha=0.5))


def test_valid_mask_shape_is_checked():
  v = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match="valid"):
    losses.sdm_loss(v, v, np.arange(4), valid=np.ones(3, bool))
  with pytest.raises(ValueError, match="valid"):
    ranking_losses.triplet_ranking_loss(v, v, np.arange(4), jax.random.key(0), valid=np.ones((4, 1), bool))


# ------------------------------------------------------------------------------------------------ mining


MINE = jax.jit(ranking_losses.mine_semi_hard_negatives)
TRIPLET = jax.jit(ranking_losses.triplet_ranking_loss)
CMR = jax.jit(ranking_losses.cmr_loss, static_argnames=("commonality",))


def _triplet(a, c, y, valid, key):
  return ranking_losses.triplet_ranking_loss(a, c, y, key, valid=valid)


def _cmr_prob(a, c, y, valid, key, li, lt, tau):
  return ranking_losses.cmr_loss(a, c, y, key, 0.2, image_part_logits=li, text_part_logits=lt, tau=tau, valid=valid)


def _cmr_freq(a, c, y, valid, key, li, lt, tau):
  return ranking_losses.cmr_loss(a, c, y, key, 0.2, commonality="freq", tau=tau, valid=valid)


def _mining_batch(n=16, d=8, seed=7):
  v, t = _feats(seed, n, d, corr=0.8)
  return v, t, np.arange(n, dtype=np.int32) % 5


@pytest.mark.parametrize("layout", ["random", "repeat", "scattered"])
def test_masked_mining_draws_the_sub_batch_negatives_sample_for_sample(layout):
  v, t, y = _mining_batch()
  n, b = len(y), 21
  s = ref.cosine_eps(v, t)
  sets = ref.semi_hard_sets(s, y, 0.2)
  assert sum(len(c) >= 2 for c in sets) >= 3  # the draw matters for several anchors
  src, valid = _layout(layout, n, b, 3)
  idx = np.flatnonzero(valid)
  # padded similarity: the sub-batch's values on the valid block, padding rows/columns full of semi-hard candidates
  s_pad = np.asarray(s[np.maximum(src, 0)][:, np.maximum(src, 0)], np.float32)
  pad = ~valid
  s_pad[np.ix_(np.arange(b), pad)] = np.diag(s_pad)[:, None] - 0.1
  y_pad = np.where(valid, y[np.maximum(src, 0)], 99).astype(np.int32)
  for seed in range(4):
    key = jax.random.key(seed)
    neg_sub, found_sub = (np.asarray(x) for x in MINE(s.astype(np.float32), y, key, 0.2))
    neg_pad, found_pad = (np.asarray(x) for x in MINE(s_pad, y_pad, key, 0.2, valid))
    np.testing.assert_array_equal(found_pad[idx], found_sub)
    assert not found_pad[pad].any()
    np.testing.assert_array_equal(neg_pad[idx][found_sub], idx[neg_sub[found_sub]])
    neg_all, found_all = MINE(s.astype(np.float32), y, key, 0.2, np.ones(n, bool))  # all valid = the unmasked stream
    np.testing.assert_array_equal(neg_all, neg_sub)
    np.testing.assert_array_equal(found_all, found_sub)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_triplet_on_a_padded_batch_equals_the_sub_batch(layout):
  v, t, y = _mining_batch()
  (a, c), y_pad, valid = _pad((v, t), y, layout, 21, seed=4)
  for seed in range(3):
    key = jax.random.key(seed)
    k_img, k_txt = jax.random.split(key)
    s = ref.cosine_eps(v, t).astype(np.float32)
    picks = dict(pick_img=_picker(MINE(s, y, k_img, 0.2)[0]), pick_txt=_picker(MINE(s.T, y, k_txt, 0.2)[0]))
    want = ref.triplet(v, t, y, 0.2, **picks)
    _close(TRIPLET(a, c, y_pad, key, valid=valid), want)
    _close(TRIPLET(v, t, y, key), want)
    assert float(TRIPLET(v, t, y, key, valid=np.ones(len(y), bool))) == float(TRIPLET(v, t, y, key))
  key = jax.random.key(0)
  _check_grads(_triplet, (a, c, y_pad, valid, key), (v, t, y, None, key), valid)


@pytest.mark.parametrize("entries", [ONE_CANDIDATE, FALLBACK, ONE_DIRECTION], ids=["one", "fallback", "one_dir"])
def test_triplet_designed_cases_and_fallback_ignore_padding(entries):
  """The fallback triplet is the last VALID anchor with its lowest-index VALID negative."""
  v, t = _feats_with_similarity(_designed(entries))
  want = ref.triplet(v, t, Y6, 0.2)
  (a, c), y_pad, valid = _pad((v, t), Y6, "random", 9, seed=5)
  assert not np.isclose(float(TRIPLET(a, c, y_pad, jax.random.key(0))), want, rtol=1e-3)
  for seed in range(3):
    _close(TRIPLET(a, c, y_pad, jax.random.key(seed), valid=valid), want)
  # a padding row BEFORE the real ones with another id: it must not become the fallback's lowest-index negative
  a3 = np.concatenate([np.eye(1, v.shape[1], 1, dtype=np.float32), v])
  c3 = np.concatenate([t[:1] * 0.5 + t[5:6], t])
  y3 = np.concatenate([[42], Y6]).astype(np.int32)
  valid3 = np.arange(7) > 0
  for seed in range(2):
    _close(TRIPLET(a3, c3, y3, jax.random.key(seed), valid=valid3), want)


def _parts_batch(n=10, p=3, d=8, k=5, seed=4):
  rng = np.random.default_rng(seed)
  vp = rng.normal(size=(n, p, d)).astype(np.float32)
  tp = (0.8 * vp + rng.normal(size=(n, p, d))).astype(np.float32)
  li, lt = (rng.normal(size=(n, p, k)).astype(np.float32) * 2 for _ in range(2))
  return vp, tp, li, lt, np.arange(n, dtype=np.int32) % 4


@pytest.mark.parametrize("layout", ["repeat", "random", "scattered"])
@pytest.mark.parametrize("commonality", ["prob", "freq"])
def test_cmr_on_a_padded_batch_equals_the_sub_batch(commonality, layout):
  m, tau = 0.2, 0.2
  vp, tp, li, lt, y = _parts_batch()
  (a, c, pli, plt), y_pad, valid = _pad((vp, tp, li, lt), y, layout, 14, seed=6)
  if commonality == "prob":
    sc_i, sc_t = ref.commonality_prob(li, y), ref.commonality_prob(lt, y)
  else:
    sc_i, sc_t = ref.commonality_freq(vp, y, tau), ref.commonality_freq(tp, y, tau)
    if layout == "repeat":  # the repeated rows would shift the in-batch frequency of the valid anchors
      sc_pad = ref.commonality_freq(a, y_pad, tau)[valid]
      assert np.abs(sc_pad - sc_i).max() > 0.05
  key = jax.random.key(3)
  picks = []
  for i, kp in enumerate(jax.random.split(key, vp.shape[1])):
    k_img, k_txt = jax.random.split(kp)
    s = ref.cosine_eps(vp[:, i], tp[:, i]).astype(np.float32)
    picks.append((_picker(MINE(s, y, k_img, m)[0]), _picker(MINE(s.T, y, k_txt, m)[0])))
  want = ref.cmr(vp, tp, y, m, 0.05, sc_i, sc_t, picks)
  kw = dict(commonality=commonality, tau=tau)
  _close(CMR(a, c, y_pad, key, m, image_part_logits=pli, text_part_logits=plt, valid=valid, **kw), want)
  _close(CMR(vp, tp, y, key, m, image_part_logits=li, text_part_logits=lt, **kw), want)
  fn = _cmr_prob if commonality == "prob" else _cmr_freq
  _check_grads(fn, (a, c, y_pad, valid, key, pli, plt, tau), (vp, tp, y, None, key, li, lt, tau), valid)


# ------------------------------------------------------------------------------------------------ compute_losses


def _outputs(seed, n, e=8, g=2, p=3, k=6, lt=5, np_=4, w=8):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
  img = {"global": f(n, e), "tokens": f(n, 1 + np_, e), "coarse": f(n, g, e), "part": f(n, p, e)}
  txt = {k_: (0.7 * x + f(*x.shape)).astype(np.float32) for k_, x in img.items() if k_ != "tokens"}
  txt["tokens"] = f(n, lt, e)
  return {"image": img, "text": txt, "image_logits": 2 * f(n, 1 + g + p, k), "text_logits": 2 * f(n, 1 + g + p, k),
          "mlm_hidden": f(n, lt, w)}


def test_compute_losses_on_a_padded_batch_equals_the_unpadded_batch():
  """Every term and accuracy at once (synthetic outputs; tests/test_recipes.py runs a real preset)."""
  n, b = 9, 13
  out = _outputs(0, n)
  rng = np.random.default_rng(1)
  ids = rng.integers(1, 40, size=(n, 5)).astype(np.int32)
  ids[:, 4] = 0
  labels = np.where(rng.random((n, 5)) < 0.4, ids, 0).astype(np.int32)
  pids = (np.arange(n) % 4).astype(np.int32)
  batch = {"pids": pids, "caption_ids": ids, "mlm_labels": labels}
  head_w = rng.normal(size=(8, 40)).astype(np.float32)
  head = lambda h: h @ head_w  # noqa: E731
  leaves, tree = jax.tree.flatten((out, batch))
  padded, pids_pad, valid = _pad(leaves, pids, "repeat", b, seed=2)
  out_pad, batch_pad = jax.tree.unflatten(tree, padded)
  batch_pad = dict(batch_pad, pids=pids_pad, valid=valid)
  batch_pad["mlm_labels"] = batch_pad["mlm_labels"].copy()
  batch_pad["mlm_labels"][~valid] = 7  # labels on the padding rows must be ignored too
  for commonality in ("prob", "freq"):
    opts = objectives.LossOptions(sdm=1.0, asdm=1.0, itc=1.0, id=1.0, mlm=1.0, efa=1.0, triplet=1.0, cmr=1.0,
                                  cmr_commonality=commonality, efa_mask_padding=True, mlm_head="full")
    key = jax.random.key(5)
    fn = jax.jit(lambda o, bt: objectives.compute_losses(o, bt, opts, key, head))
    total, terms = fn(out, batch)
    total_pad, terms_pad = fn(out_pad, batch_pad)
    assert set(terms) == set(terms_pad) and {"img_acc", "txt_acc", "mlm_acc"} <= set(terms)
    assert set(objectives.VALID_MASK_TERMS) <= set(terms)  # every term that claims the mask is checked here
    for name in terms:
      np.testing.assert_allclose(terms_pad[name], terms[name], rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(total_pad, total, rtol=RTOL)
    if commonality == "freq":
      continue
    grads = jax.jit(jax.grad(lambda o, bt: fn(o, bt)[0]))(out_pad, batch_pad)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
      g = np.asarray(g)
      assert np.all(np.isfinite(g)) and not np.any(g[~valid]), jax.tree_util.keystr(path)


def test_a_masked_batch_is_refused_when_an_active_term_does_not_honour_the_mask(monkeypatch):
  """The refusal of compute_losses: with EFA taken off the list (as a new term would be), a padded batch with EFA on
  raises naming it and the fix; the same batch trains when EFA is off, and an unpadded batch always does."""
  n, b = 6, 8
  out = _outputs(3, n)
  (gv, gt), pids, valid = _pad((out["image"]["global"], out["text"]["global"]), np.arange(n, dtype=np.int32) % 3,
                               "repeat", b)
  tokens_v, tokens_t = (np.resize(x, (b,) + x.shape[1:]) for x in (out["image"]["tokens"], out["text"]["tokens"]))
  padded = {"image": {"global": gv, "tokens": tokens_v}, "text": {"global": gt, "tokens": tokens_t}}
  batch = {"pids": pids, "valid": valid, "caption_ids": np.ones((b, tokens_t.shape[1]), np.int32)}
  key = jax.random.key(0)
  monkeypatch.setattr(objectives, "VALID_MASK_TERMS", tuple(n for n in objectives.VALID_MASK_TERMS if n != "efa"))
  with pytest.raises(NotImplementedError, match=r"\['efa'\] do not honour it.*drop_last=True"):
    objectives.compute_losses(padded, batch, objectives.LossOptions(sdm=1.0, efa=1.0), key)
  _, terms = objectives.compute_losses(padded, batch, objectives.LossOptions(sdm=1.0), key)
  np.testing.assert_allclose(terms["sdm"], ref.sdm(gv[valid], gt[valid], pids[valid]), rtol=RTOL)
  unpadded = {k: v for k, v in batch.items() if k != "valid"}
  assert set(objectives.compute_losses(padded, unpadded, objectives.LossOptions(sdm=1.0, efa=1.0), key)[1]) == {
      "sdm", "efa"}
