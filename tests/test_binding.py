"""Binding measures on hand-built cases; the synthetic ground truth (masks, region rows, word regions) against the
renderer's geometry; the "plain" caption style; the report of a tiny part model on a tiny generated split."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tpsearch_jax import binding, objectives
from tpsearch_jax.data import read_annotations
from tpsearch_jax.data.synthetic import captions as sc
from tpsearch_jax.data.synthetic import ensure, generate, truth


def test_auc_counts_pairs_and_ties():
  assert binding.auc([3, 2, 1], [True, False, True]) == 0.5  # (3 > 2) and (1 < 2)
  assert binding.auc([1, 1, 0], [True, False, False]) == 0.75  # tie ½, win 1
  assert np.isnan(binding.auc([1, 2], [True, True]))
  fg = np.array([[5.0, 1.0, 0.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
  mask = np.array([[1.0, 0.0, 0.2, 0.6], [0.0, 0.0, 0.0, 0.0]])  # second image: one class only, left out
  assert binding.foreground_auc(fg, mask) == 1.0


def test_stripe_coverage():
  rows = np.array([[[0.0, 0.5], [0.25, 0.75]], [[0.0, 0.25], [0.5, 1.0]]])  # 2 images × 2 regions
  # image 1: region 0 fills stripe 0, region 1 half of each; image 2: region 0 half of stripe 0, region 1 stripe 1
  np.testing.assert_allclose(binding.stripe_coverage(rows, 2), [[0.75, 0.25], [0.0, 0.75]])


def test_attention_on_region_words():
  attn = np.array([[[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.5, 0.0]]])  # 1 caption, 2 part tokens, 4 tokens
  token_region = np.array([[-1, 0, 1, -2]])  # last token padding
  covers = np.array([[True, False], [False, True]])
  mass, chance = binding.attention_on_region_words(attn, token_region, covers)
  np.testing.assert_allclose(mass, [0.6, 0.5])
  np.testing.assert_allclose(chance, [1 / 3, 1 / 3])


def test_twin_gap_share_and_coarse_cosine():
  own = np.array([[0.9, 0.5, 0.8], [0.7, 0.5, 0.6]])
  twin = np.array([[0.8, 0.5, 0.4], [0.7, 0.3, 0.6]])
  target = np.array([[False, False, True], [False, False, True]])
  share, chance = binding.twin_gap_share(own, twin, np.array([2.0, 1.0, 1.0]), target)
  # weighted gaps: pair 1 (0.2, 0, 0.4), pair 2 (0, 0.2, 0) → target 0.4 of total 0.8
  np.testing.assert_allclose([share, chance], [0.5, 0.25])
  c = np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
  np.testing.assert_allclose(binding.coarse_cosine(c), 1 / 3)  # pairs: 0, 1, 0


def test_word_regions():
  got = truth.word_regions("A person wearing a red t-shirt and blue jeans, with short black hair. Carries a bag.")
  regions = {w: truth.REGIONS[r] for w, r in got if r >= 0}
  assert regions == {"red": "upper", "t-shirt": "upper", "blue": "lower", "jeans": "lower", "short": "head",
                     "black": "head", "hair": "head"}
  assert truth.caption_words_known("The person wears grey trousers and a navy coat.")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth") / "s")
  generate(root, num_ids=8, images_per_id=2, seed=4, image_size=(96, 32), split_fractions=(0.5, 0.25, 0.25))
  return root


def test_mask_and_rows_follow_the_rendered_figure(tiny_set):
  meta = truth.read_meta(tiny_set)
  records = json.load(open(os.path.join(tiny_set, "reid_raw.json")))
  for rec in records[:6]:
    attrs, shot = truth.image_truth(meta, rec["file_path"])
    mask = truth.person_mask(attrs, shot, (96, 32))
    rows = truth.region_rows(attrs, shot)
    assert 0.05 < mask.mean() < 0.6 and mask.max() == 1.0
    filled = np.flatnonzero(mask.max(axis=1) > 0.5) / 96
    hat = attrs["hat.type"] != "none"
    assert abs(filled[0] - rows[0, 0]) < (0.04 if hat else 0.025)  # head top (a hat sits a little higher)
    if shot.occluder != "low":
      assert abs(filled[-1] + 1 / 96 - rows[3, 1]) < 0.03  # shoe soles
    assert np.all(np.diff(rows[:, 0]) >= 0)  # head, upper, lower, shoes from top to bottom
    # the renderer's pixels: the mask is 0 where the image equals the background far from the person
  with pytest.raises(ValueError, match="not a synthetic_pedes image name"):
    truth.image_truth(meta, "x.jpg")


def test_plain_caption_style(tmp_path):
  root = str(tmp_path / "plain")
  generate(root, num_ids=6, images_per_id=1, seed=2, caption_style="plain", split_fractions=(0.5, 0.25, 0.25))
  records = json.load(open(os.path.join(root, "reid_raw.json")))
  meta = truth.read_meta(root)
  by_id = {p["id"]: p["attributes"] for p in meta["identities"]}
  templates = [t.split("{")[0] for t in sc.PLAIN_TEMPLATES]
  for rec in records:
    for c in rec["captions"]:
      assert any(c.startswith(t) for t in templates), c
      colour = sc.PLAIN_COLOURS.get(by_id[rec["id"]]["upper.colour"], by_id[rec["id"]]["upper.colour"])
      assert colour in c
      assert not any(w in c.lower() for w in ("shirt", "jeans", "hair", "shoes", "bag", "glasses"))
  assert meta["generator"]["caption_style"] == "plain"
  assert ensure(root, num_ids=6, images_per_id=1, seed=2, caption_style="plain",
                split_fractions=(0.5, 0.25, 0.25))["caption_style"] == "plain"
  with pytest.raises(ValueError, match="other arguments"):
    ensure(root, num_ids=6, images_per_id=1, seed=2, split_fractions=(0.5, 0.25, 0.25))
  with pytest.raises(ValueError, match="caption_style must be one of"):
    generate(str(tmp_path / "bad"), caption_style="terse")


def test_report_of_a_tiny_part_model(tiny_set):
  import jax
  from tpsearch_jax.config_files import load_config
  from tpsearch_jax.evaluate_binding import applies, binding_report
  from tpsearch_jax.models import build_model
  from tpsearch_jax.training import config_checks
  from tpsearch_jax.training.options import run_options
  from tpsearch_jax import batch as batch_lib

  c = load_config(os.path.join(os.path.dirname(__file__), os.pardir, "configs", "synthetic.py:pcc"))
  c.data.root = tiny_set
  c.model.clip.update(dict(embed_dim=16, vision_width=16, text_width=16, vision_layers=1, text_layers=1))
  c.model.part.update(dict(num_queries=2, num_parts=3))
  c = config_checks.resolve_config(c, num_classes=4)
  o = run_options(c)
  assert applies(o.model, o.data)
  model = build_model(o)
  batch = {k: jax.numpy.asarray(v) for k, v in batch_lib.fake_train_batch(o.batch_options, 2).items()}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch)["params"])
  rng = np.random.default_rng(0)  # random weights without compiling the initialiser; LayerNorm scales 1
  params = jax.tree_util.tree_map_with_path(
      lambda p, s: np.ones(s.shape, np.float32) if "scale" in jax.tree_util.keystr(p)
      else rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
  report = binding_report(model, params, o.clip, o.model, o.data, read_annotations("synthetic_pedes", tiny_set))
  assert 0.0 <= report["foreground_auc"] <= 1.0
  assert set(report["stripe_coverage"]) == {"stripe_0", "stripe_1", "stripe_2"}
  assert report["stripe_coverage"]["stripe_0"]["head"] > report["stripe_coverage"]["stripe_2"]["head"]
  assert len(report["part_attention"]["mass"]) == 3
  assert -1.0 <= report["coarse_cosine"]["image"] <= 1.0


def test_token_regions_follow_the_words_through_the_tokenizer():
  from tpsearch_jax.evaluate_binding import _token_regions
  from tpsearch_jax.models.clip.tokenizer import tokenize
  caption = "A person wearing a navy t-shirt and blue jeans, with long hair."
  ids = tokenize([caption], 12)[0]  # cut: SOT + 10 tokens + EOT
  got = _token_regions(caption, ids, tokenize, 12)
  # a person wearing a | navy t - shirt (upper) | and | blue jeans (lower) | , (cut here)
  np.testing.assert_array_equal(got, [-2, -1, -1, -1, -1, 1, 1, 1, 1, -1, 2, -2])
  assert np.all(_token_regions("unrelated words", ids, tokenize, 12) == -2)  # ids of another text: no labels


def test_twin_pairs_both_ways():
  from tpsearch_jax.evaluate_binding import twin_pairs
  meta = {"identities": [{"id": 1, "twin_of": None, "differs_in": None},
                         {"id": 2, "twin_of": 1, "differs_in": "lower.type"},
                         {"id": 3, "twin_of": None, "differs_in": None}]}
  assert twin_pairs(meta) == {1: (2, "lower"), 2: (1, "lower")}


def test_train_time_coarse_cosine_is_the_mean_pairwise_cosine_of_valid_rows():
  """objectives logs coarse_cos_img / _txt each step: against a loop over rows and token pairs, padding rows left out."""
  rng = np.random.default_rng(3)
  coarse = rng.normal(size=(4, 3, 5)).astype(np.float32)
  coarse[1] = coarse[1, :1] * np.array([[1.0], [2.0], [0.5]], np.float32)  # row 1: one direction, cosine 1
  valid = np.array([True, True, False, True])

  def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

  per_row = [np.mean([cos(c[j], c[k]) for j in range(3) for k in range(j + 1, 3)]) for c in coarse.astype(np.float64)]
  assert per_row[1] == pytest.approx(1.0)
  np.testing.assert_allclose(objectives._coarse_cosine(coarse, None), np.mean(per_row), rtol=1e-5)
  np.testing.assert_allclose(objectives._coarse_cosine(coarse, valid), np.mean(np.asarray(per_row)[valid]), rtol=1e-5)
