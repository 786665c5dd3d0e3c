"""Loss wiring in the model path: for every preset's active terms, ``objectives.compute_losses`` on a tiny model's real
outputs equals the float64 numpy reference (tests/numpy_reference.py) applied to the pieces that the documented
wiring names (objectives module docstring), selected here from the outputs by the test itself.

Which tokens (EFA: every caption position vs the patch tokens without CLS), which margins (t2e on the text term,
i2e on the image term), which pieces (id: every piece; triplet: global + coarse, or coarse only with
global_loss="sdm"; CMR: the parts), which logits (CMR "prob": the classifier's LAST num_parts pieces). The random
negatives of the triplet and CMR terms are drawn by ``ranking_losses.mine_semi_hard_negatives`` with the documented
keys (rng → (triplet, cmr) = split(rng); one sub-key per ranked embedding / part, split into image and text
anchors); every drawn negative is checked to lie in the numpy semi-hard set.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest

import numpy_reference as ref
from test_losses import _picker
from tpsearch_jax import objectives, ranking_losses
from tpsearch_jax.models import build_model, method_options, tiny_model_config
from tpsearch_jax.models.presets import METHODS

VOCAB, LENGTH, K = 1000, 16, 8
SOT, EOT, MASK = VOCAB - 2, VOCAB - 1, VOCAB - 3
B = 8
PIDS = np.array([0, 0, 1, 1, 2, 3, 5, 5], np.int32)
RTOL = 2e-6  # float32 outputs → float32 loss vs the float64 reference: observed ≤ 1.5e-7
CLIP_METHODS = ("clip", "irra", "fmfa", "fmfa_paper", "pcc", "combined")  # the paper-backbone presets: see below
MINE = jax.jit(ranking_losses.mine_semi_hard_negatives)


def _config(method: str) -> dict:
  cfg = tiny_model_config(method, num_classes=K, vocab_size=VOCAB)
  cfg["model"]["clip"].update(vision_layers=1, text_layers=1, context_length=LENGTH)
  cfg["model"]["cross_layers"] = 1
  for i, name in enumerate(objectives.LOSS_NAMES):
    if cfg["loss"][name]:
      cfg["loss"][name] = 1.0 + 0.25 * i  # distinct weights: the total checks the weighting
  return cfg


def _batch() -> dict[str, np.ndarray]:
  r = np.random.default_rng(0)
  ids = np.zeros((B, LENGTH), np.int32)
  mlm_ids, labels = ids.copy(), ids.copy()
  for b in range(B):
    n = int(r.integers(5, LENGTH - 1))
    ids[b, 0], ids[b, n] = SOT, EOT
    ids[b, 1:n] = r.integers(1, MASK, n - 1)
    picked = np.flatnonzero(r.random(n - 1) < 0.3) + 1
    picked = picked if picked.size else np.array([1])
    mlm_ids[b] = ids[b]
    labels[b, picked] = ids[b, picked]
    mlm_ids[b, picked] = MASK
  return {"images": r.standard_normal((B, 48, 16, 3)).astype(np.float32), "caption_ids": ids, "mlm_ids": mlm_ids,
          "mlm_labels": labels, "pids": PIDS.copy(), "image_ids": np.arange(B, dtype=np.int32)}


def _architecture(method: str) -> str:
  """The method whose model ``method`` shares: the same options but the name, and heads that include its own (the
  token-pooled presets without parts run on irra's model, which builds the classifier and the MLM head)."""
  m = method_options(_config(method))
  options, loss = m.model, m.loss
  for other in ("irra", "pcc", "combined"):
    other_options = method_options(_config(other))
    o, lo = other_options.model, other_options.loss
    heads, own = objectives.required_heads(lo), objectives.required_heads(loss)
    if (dataclasses.replace(o, name=method) == options and (heads.classifier or not own.classifier)
        and (heads.mlm or not own.mlm)):
      return other
  raise AssertionError(f"no shared model for {method}")


def _run(method: str):
  return _run_model(_architecture(method))


@functools.cache
def _run_model(method: str):
  """(model, params, outputs, full-vocabulary MLM logits f64 or None) of the tiny ``method`` model."""
  model = build_model(method_options(_config(method)))
  batch = _batch()
  key = jax.random.key(0)
  params = jax.jit(lambda x: model.init({"params": key}, x)["params"])(batch)
  if "classifier" in params:  # spread the logits, so the commonality scores and the id term vary across pieces
    kernel = params["classifier"]["kernel"]
    params = dict(params, classifier=dict(params["classifier"], kernel=np.random.default_rng(1).normal(
        0, 3.0 / np.sqrt(kernel.shape[0]), kernel.shape).astype(np.float32)))
  outputs = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, batch)
  mlm_logits = None
  if "mlm_hidden" in outputs:
    mlm_logits = np.asarray(objectives.mlm_head_fn(model, params)(outputs["mlm_hidden"]), np.float64)
  return model, params, outputs, mlm_logits


def _loss(method: str, **overrides) -> objectives.LossOptions:
  cfg = _config(method)
  cfg["loss"].update(overrides)
  return method_options(cfg).loss


def _computed(method: str, loss: objectives.LossOptions, rng=jax.random.key(7)):
  model, params, outputs, _ = _run(method)
  fn = jax.jit(lambda o, b: objectives.compute_losses(o, b, loss, rng, objectives.mlm_head_fn(model, params)))
  total, terms = fn(outputs, _batch())
  return float(total), {k: float(v) for k, v in terms.items()}


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


# ------------------------------------------------------------------------------------------------ references


def _ranking_picks(v, t, keys):
  """Per embedding g (v, t [B, G, D], keys [G]): the (image, text) pickers of the negatives drawn with keys[g]."""
  picks = []
  for g in range(v.shape[1]):
    k_img, k_txt = jax.random.split(keys[g])
    s = ref.cosine_eps(v[:, g], t[:, g]).astype(np.float32)
    picks.append((_picker(MINE(s, PIDS, k_img, 0.2)[0]), _picker(MINE(s.T, PIDS, k_txt, 0.2)[0])))
  return picks


def _ranked(out, loss):
  """The embeddings the triplet term ranks, by the wiring: [global (global_loss="triplet")] + coarse_1..N_D."""
  img, txt = out["image"], out["text"]
  v = ([_np(img["global"])[:, None]] if loss.global_loss == "triplet" else []) + [_np(img["coarse"])]
  t = ([_np(txt["global"])[:, None]] if loss.global_loss == "triplet" else []) + [_np(txt["coarse"])]
  return np.concatenate(v, 1), np.concatenate(t, 1)


def expected_terms(method: str, loss: objectives.LossOptions, rng=jax.random.key(7), cmr_logits="last",
                   efa_image="patches", efa_margins=None) -> dict[str, float]:
  """Every active term of ``loss`` from ``method``'s outputs and the numpy reference (the keyword arguments select
  deliberately wrong pieces, to show that the comparison would notice them)."""
  _, _, out, mlm_logits = _run(method)
  img, txt = out["image"], out["text"]
  batch = _batch()
  gv, gt = _np(img["global"]), _np(txt["global"])
  want = {}
  if loss.sdm:
    want["sdm"] = ref.sdm(gv, gt, PIDS, loss.logit_scale)
  if loss.asdm:
    want["asdm"] = ref.asdm(gv, gt, PIDS, loss.logit_scale, loss.asdm_alpha, loss.asdm_gap)
  if loss.itc:
    want["itc"] = ref.itc(gv, gt, loss.logit_scale)
  if loss.id:
    li, lt = _np(out["image_logits"]), _np(out["text_logits"])  # [B, M, K]: every piece, or the global one only
    if getattr(loss, "id_pieces", "all") == "global":
      li, lt = li[:, :1], lt[:, :1]
    m = li.shape[1]
    want["id"] = ref.id_loss(li.reshape(-1, K), lt.reshape(-1, K), np.repeat(PIDS, m))
  if loss.mlm:
    want["mlm"] = ref.mlm(mlm_logits, batch["mlm_labels"])
  if loss.efa:
    tokens, patches = _np(txt["tokens"]), _np(img["tokens"])[:, 1:]
    if efa_image == "all_tokens":
      patches = _np(img["tokens"])
    m_t2e, m_i2e = efa_margins or (loss.efa_margin_t2e, loss.efa_margin_i2e)
    if loss.efa_arithmetic == "paper":
      want["efa"] = ref.efa_paper(tokens, patches, m_t2e, m_i2e, loss.efa_lse_temperature)
    else:
      mask = batch["caption_ids"] != 0 if loss.efa_mask_padding else None
      want["efa"] = ref.efa(tokens, patches, m_t2e, m_i2e, loss.efa_lse_temperature, mask=mask)
  tri_key, cmr_key = jax.random.split(rng)
  mining, reduction = getattr(loss, "ranking_mining", "semi_hard"), getattr(loss, "ranking_reduction", "sum")
  per_anchor = 1.0 / (2 * B) if reduction == "mean" else 1.0  # "mean": the sum over anchors and directions / 2N
  if loss.triplet:
    v, t = _ranked(out, loss)
    picks = _ranking_picks(v, t, jax.random.split(tri_key, v.shape[1]))
    per = [ref.batch_ranking(v[:, g], t[:, g], PIDS, loss.triplet_margin, mining=mining) if mining != "semi_hard"
           else ref.triplet(v[:, g], t[:, g], PIDS, loss.triplet_margin, pick_img=pi, pick_txt=pt)
           for g, (pi, pt) in enumerate(picks)]
    want["triplet"] = per_anchor * (np.mean(per) if reduction == "mean" else sum(per))  # "mean": also over pieces
  if loss.cmr:
    vp, tp = _np(img["part"]), _np(txt["part"])
    p = vp.shape[1]
    if loss.cmr_commonality == "prob":
      sel = slice(-p, None) if cmr_logits == "last" else slice(0, p)
      sc_i = ref.commonality_prob(_np(out["image_logits"])[:, sel], PIDS)
      sc_t = ref.commonality_prob(_np(out["text_logits"])[:, sel], PIDS)
    else:
      sc_i, sc_t = ref.commonality_freq(vp, PIDS, loss.cmr_tau), ref.commonality_freq(tp, PIDS, loss.cmr_tau)
    picks = _ranking_picks(vp, tp, jax.random.split(cmr_key, p))
    want["cmr"] = ref.cmr(vp, tp, PIDS, loss.cmr_margin, loss.cmr_floor, sc_i, sc_t, picks, mining) * (
        per_anchor / p if reduction == "mean" else 1.0)
  return want


REFERENCED = ("sdm", "asdm", "itc", "id", "mlm", "efa", "triplet", "cmr")


# ------------------------------------------------------------------------------------------------ tests


def test_every_preset_term_has_a_reference_here():
  """A preset that turns on a term this module cannot re-derive fails here (a new loss needs its wiring test)."""
  for method in METHODS:
    assert set(_loss(method).active) <= set(REFERENCED), method
  for paper in ("pcc_paper_vit", "pcc_paper_rn50"):  # the same objective as pcc: its wiring is pcc's test
    assert _loss(paper) == _loss("pcc"), paper


@pytest.mark.parametrize("method", CLIP_METHODS)
def test_preset_terms_equal_the_reference_on_the_documented_pieces(method):
  loss = _loss(method)
  total, terms = _computed(method, loss)
  want = expected_terms(method, loss)
  assert set(loss.active) == set(want) and set(want) <= set(terms)
  for name, value in want.items():
    assert value > 0, name
    np.testing.assert_allclose(terms[name], value, rtol=RTOL, err_msg=name)
  np.testing.assert_allclose(total, sum(getattr(loss, n) * want[n] for n in want), rtol=RTOL)
  _, _, out, _ = _run(method)
  if loss.needs_classifier:  # accuracies: the global piece (piece 0) of each modality
    for side in ("img", "txt"):
      logits = _np(out[("image" if side == "img" else "text") + "_logits"])[:, 0]
      np.testing.assert_allclose(terms[f"{side}_acc"], np.mean(np.argmax(logits, -1) == PIDS), atol=1e-6)


@pytest.mark.parametrize("method, overrides", [
    ("clip", dict(itc=1.0)),  # ITC (in no preset): the global embeddings
    ("fmfa", dict(efa_mask_padding=True)),  # padded caption positions left out
    ("combined", dict(cmr_commonality="freq", cmr_tau=0.3)),  # frequency commonality from the parts themselves
    ("combined", dict(global_loss="triplet")),  # the global embedding ranked with the coarse ones
    ("pcc", dict(ranking_mining="batch_hard", ranking_reduction="mean")),
    ("pcc", dict(ranking_mining="batch_all")),
    ("pcc", dict(id_pieces="global")),
], ids=["itc", "efa_mask", "cmr_freq", "combined_global_triplet", "batch_hard_mean", "batch_all", "id_global"])
def test_option_variants_equal_the_reference(method, overrides):
  loss = _loss(method, **overrides)
  _, terms = _computed(method, loss)
  for name, value in expected_terms(method, loss).items():
    np.testing.assert_allclose(terms[name], value, rtol=RTOL, err_msg=name)


def test_the_comparisons_would_see_a_wrong_piece():
  """The deliberate mis-wirings move the reference far outside the tolerance on these outputs."""
  fmfa = _loss("fmfa")
  right = expected_terms("fmfa", fmfa)["efa"]
  swapped = expected_terms("fmfa", fmfa, efa_margins=(fmfa.efa_margin_i2e, fmfa.efa_margin_t2e))["efa"]
  with_cls = expected_terms("fmfa", fmfa, efa_image="all_tokens")["efa"]
  for wrong in (swapped, with_cls):
    assert abs(wrong - right) > 10 * RTOL * right
  pcc = _loss("pcc")
  right = expected_terms("pcc", pcc)["cmr"]
  first = expected_terms("pcc", pcc, cmr_logits="first")["cmr"]
  assert abs(first - right) > 10 * RTOL * right
