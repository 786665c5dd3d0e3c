"""Faithful recipes: every preset × dataset config carries the published values, IRRA's parameter groups, the
reference epoch length, and the recipe table of docs/methods.md says what the configs train with.

The expected values are written from the references as docs/methods.md cites them (§2.5 A-SDM table, §2.6 EFA table,
§4 recipe and parameter groups) and the FMFA paper, never from the code under test.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dataset_fixtures as fx
from tpsearch_jax import batch as batch_lib
from tpsearch_jax import objectives
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.data.pipeline.training import train_iterator
from tpsearch_jax.data import samplers
from tpsearch_jax.models import build_model, method_options, tiny_model_config
from tpsearch_jax.training import optim

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
DATASETS = ("cuhk", "icfg", "rstp")


def load(dataset: str, method: str):
  return load_config_module(os.path.join(ROOT, "configs", f"{dataset}.py")).get_config(method)


# docs/methods.md §4 (IRRA = code = paper; FMFA HEAD run.sh; FMFA paper), §2.5 (α, gap), §2.6 (margins, LSE t).
# lr, one_group, bias (lr, wd), weight wd, epochs, batch, α, gap, m_t2e, m_i2e, LSE t, EFA arithmetic.
IRRA = dict(lr=1e-5, one_group=False, bias=(2e-5, 0.0), wd=4e-5, epochs=60, batch=64)
HEAD = dict(lr=5e-6, one_group=True, bias=(5e-6, 4e-5), wd=4e-5, epochs=60, batch=64, alpha=0.1, gap="cosine",
            margins=(0.1, 0.9), lse_t=1.0, arithmetic="released")
PAPER = dict(IRRA, alpha=10.0, gap="prob", margins=(0.1, 0.1), lse_t=1.0, arithmetic="paper")
PUBLISHED = {
    ("irra", d): IRRA for d in DATASETS
} | {
    ("fmfa", d): HEAD for d in DATASETS
} | {
    ("fmfa_paper", "cuhk"): PAPER,
    ("fmfa_paper", "icfg"): dict(PAPER, margins=(0.2, 1.0), epochs=100),
    ("fmfa_paper", "rstp"): dict(PAPER, alpha=1.0, margins=(0.2, 0.8)),
}


@pytest.mark.parametrize("method,dataset", sorted(PUBLISHED))
def test_preset_on_dataset_carries_the_published_values(method, dataset):
  want, c = PUBLISHED[(method, dataset)], load(dataset, method)
  o = c.optim
  assert (o.name, o.b1, o.b2, o.eps) == ("adam", 0.9, 0.999, 1e-3)
  assert o.lr == want["lr"] and c.schedule.num_epochs == want["epochs"] and c.train.batch_size == want["batch"]
  assert (c.schedule.name, c.schedule.warmup_epochs, c.schedule.warmup_factor, c.schedule.per_step) == (
      "cosine", 5, 0.1, False)
  assert (tuple(o.param_groups) == ()) == want["one_group"]
  lr = lambda name: optim.param_group(tuple(name.split("/")), o)  # noqa: E731  (lr multiplier, wd)
  bias_mult, bias_wd = lr("clip/visual/transformer/resblocks_0/attn/query/bias")
  assert (o.lr * bias_mult, bias_wd) == pytest.approx(want["bias"], rel=1e-12)
  assert lr("clip/visual/proj") == (1.0, want["wd"])
  assert c.loss.logit_scale == 50.0  # τ = τ1 = 0.02
  if method == "irra":
    assert (c.loss.sdm, c.loss.id, c.loss.mlm, c.loss.asdm, c.loss.efa) == (1, 1, 1, 0, 0)
    return
  assert (c.loss.asdm, c.loss.id, c.loss.mlm, c.loss.efa, c.loss.sdm) == (1, 1, 1, 1, 0)
  assert (c.loss.asdm_alpha, c.loss.asdm_gap) == (want["alpha"], want["gap"])
  assert (c.loss.efa_margin_t2e, c.loss.efa_margin_i2e) == want["margins"]
  assert (c.loss.efa_lse_temperature, c.loss.efa_arithmetic) == (want["lse_t"], want["arithmetic"])


# ------------------------------------------------------------------------------------------------ parameter groups
# IRRA's build_optimizer (docs/methods.md §4) as a table over IRRA's modules: (module, weight or bias) → (lr, wd) at
# lr 1e-5, lr_factor 5, bias_lr_factor 2, wd 4e-5, bias wd 0.
IRRA_TABLE = {
    ("base_model", "weight"): (1e-5, 4e-5), ("base_model", "bias"): (2e-5, 0.0),
    ("cross_attn", "weight"): (5e-5, 4e-5), ("cross_attn", "bias"): (2e-5, 0.0),
    ("cross_modal_transformer", "weight"): (5e-5, 4e-5), ("cross_modal_transformer", "bias"): (2e-5, 0.0),
    ("ln_pre_t/ln_pre_i/ln_post", "weight"): (1e-5, 4e-5), ("ln_pre_t/ln_pre_i/ln_post", "bias"): (2e-5, 0.0),
    ("mlm_head", "weight"): (5e-5, 4e-5), ("mlm_head", "bias"): (5e-5, 0.0),
    ("classifier", "weight"): (5e-5, 4e-5), ("classifier", "bias"): (5e-5, 0.0),
}


def _irra_module(path: str) -> tuple[str, str]:
  """Our parameter path → (IRRA module, "weight" | "bias"): the module naming of models/cross_former.py."""
  top, *rest = path.split("/")
  kind = "bias" if rest[-1] == "bias" else "weight"
  if top == "clip":
    return "base_model", kind
  if top == "cross_former":
    module = {"cross_attn": "cross_attn", "transformer": "cross_modal_transformer"}.get(rest[0])
    return module or ("ln_pre_t/ln_pre_i/ln_post" if rest[0] in ("ln_pre_t", "ln_pre_i", "ln_post") else "?"), kind
  return top, kind


@pytest.fixture(scope="module")
def irra_params():
  cfg = tiny_model_config("irra")
  model = build_model(method_options(cfg))
  shape = batch_lib.BatchOptions((48, 16), load("cuhk", "irra").data.context_length)
  b = {k: jnp.asarray(v) for k, v in batch_lib.fake_train_batch(shape, 2).items()}
  return jax.eval_shape(lambda k: model.init({"params": k, "mining": k, "dropout": k}, b)["params"],
                        jax.random.key(0))


@pytest.mark.parametrize("method", ["irra", "fmfa_paper"])
def test_every_parameter_group_matches_irras_build_optimizer(irra_params, method):
  o = load("cuhk", method).optim
  seen = {}
  for path, _ in jax.tree_util.tree_leaves_with_path(irra_params):
    name = optim.path_name(path)
    mult, wd = optim.param_group(tuple(name.split("/")), o)
    key = _irra_module(name)
    assert key in IRRA_TABLE, name
    assert (o.lr * mult, wd) == pytest.approx(IRRA_TABLE[key], rel=1e-12), name
    seen[key] = seen.get(key, 0) + 1
  assert set(seen) == set(IRRA_TABLE)  # every row of the table is exercised by the real parameter tree
  groups = jax.tree.leaves(optim.param_groups(irra_params, o), is_leaf=lambda t: isinstance(t, tuple))
  assert {(round(o.lr * m, 15), w) for m, w in groups} == {(1e-5, 4e-5), (2e-5, 0.0), (5e-5, 4e-5), (5e-5, 0.0)}


def test_fmfa_head_trains_every_parameter_at_5e_6_with_weight_decay(irra_params):
  o = load("icfg", "fmfa").optim
  groups = jax.tree.leaves(optim.param_groups(irra_params, o), is_leaf=lambda t: isinstance(t, tuple))
  assert {(o.lr * m, w) for m, w in groups} == {(5e-6, 4e-5)}


# ------------------------------------------------------------------------------------ docs/methods.md recipe table


def _readme_rows():
  text = open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8").read()
  block = text.split("<!-- recipes -->", 1)[1].split("<!-- /recipes -->", 1)[0]
  rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block.strip().splitlines()]
  return {(r[0].strip("`"), r[1]): r for r in rows[2:]}


def test_methods_doc_recipe_table_matches_the_configs():
  rows = _readme_rows()
  assert set(rows) == set(PUBLISHED)
  for (method, dataset), r in rows.items():
    c = load(dataset, method)
    o = c.optim
    _, _, lr, groups, bias, wd, epochs, batch, asdm, efa, _ = r
    assert float(lr) == o.lr and float(wd) == o.weight_decay, r
    assert groups == ("one group" if tuple(o.param_groups) == () else "IRRA"), r
    if groups == "IRRA":
      assert tuple(map(tuple, o.param_groups)) == optim.IRRA_GROUPS, r
    mult, bias_wd = optim.param_group(("clip", "visual", "ln_post", "bias"), o)
    assert tuple(float(x) for x in bias.split("/")) == pytest.approx((o.lr * mult, bias_wd)), r
    assert (int(epochs), int(batch)) == (c.schedule.num_epochs, c.train.batch_size), r
    if c.loss.asdm:
      alpha, gap = (x.strip() for x in asdm.split(","))
      assert (float(alpha), gap) == (c.loss.asdm_alpha, c.loss.asdm_gap), r
    else:
      assert asdm == "—", r
    if c.loss.efa:
      m = re.fullmatch(r"([\d.]+) / ([\d.]+), ([\d.]+), (\w+)", efa)
      assert m, r
      assert (float(m[1]), float(m[2]), float(m[3]), m[4]) == (
          c.loss.efa_margin_t2e, c.loss.efa_margin_i2e, c.loss.efa_lse_temperature, c.loss.efa_arithmetic), r
    else:
      assert efa == "—", r


def test_unknown_per_method_override_is_named():
  from tpsearch_jax.configs import base
  c = load("cuhk", "irra")
  with pytest.raises(ValueError, match="configs/x.py:irra.*'optim.lrr'"):
    base.apply_per_method(c, {"irra": {"optim.lrr": 1.0}}, "irra", "configs/x.py")
  with pytest.raises(ValueError, match="unknown method"):
    base.apply_per_method(c, {"irrra": {}}, "irra", "configs/x.py")


# ------------------------------------------------------------------------------------------------ epoch length


def test_reference_epoch_length_on_cuhk():
  """docs/methods.md §4: CUHK-PEDES 68,126 captions at batch 64, drop_last=False → 1,065 iterations, the last of 30."""
  assert samplers.steps_per_epoch(68126, 64, drop_last=False) == 1065
  assert samplers.steps_per_epoch(68126, 64) == 1064
  s = samplers.RandomSampler(68126, 64, seed=1, drop_last=False)
  ix = samplers.StepIndexer(s)
  assert int(ix.global_valid(1064).sum()) == 30 and ix.global_valid(1063).all()


def test_short_last_batch_covers_every_example_once_and_pads_with_its_own():
  n, b = 50, 8
  ix = samplers.StepIndexer(samplers.RandomSampler(n, b, seed=3, drop_last=False))
  epoch = [ix.global_batch(s)[ix.global_valid(s)] for s in range(7)]
  assert sorted(np.concatenate(epoch).tolist()) == list(range(n))  # every example exactly once per epoch
  last, valid = ix.global_batch(6), ix.global_valid(6)
  assert last.shape == (b,) and valid.tolist() == [True, True] + [False] * 6
  assert set(last[~valid]) <= set(last[valid])
  assert ix.global_valid(7).all() and not np.array_equal(ix.global_batch(7), ix.global_batch(0))  # next epoch
  with pytest.raises(ValueError, match="random sampler only"):
    from tpsearch_jax.data.pipeline import training
    training._sampler(training.TrainTable(np.zeros(8, object), np.arange(8, dtype=np.int32) // 2,
                                          np.arange(8, dtype=np.int32), np.zeros((8, 4), np.int32)),
                      fx.data_config(identity_sampler=True, num_instances=2, drop_last=False), 4, 0)


def test_pipeline_short_batch_carries_the_valid_mask(tmp_path):
  from PIL import Image
  import collections
  Rec = collections.namedtuple("Rec", "pid image_id image_path caption")
  records = []
  for i in range(11):
    path = str(tmp_path / f"{i}.jpg")
    Image.fromarray(fx.image_array(i, (20, 10))).save(path)
    records.append(Rec(i // 2, i, path, f"a person in a red coat number {i}"))
  cfg = fx.data_config(image_size=(16, 8), num_parallel_calls=1, drop_last=False)
  it = train_iterator(records, cfg, 4, seed=0)
  assert it.steps_per_epoch == 3
  batches = [next(it) for _ in range(3)]
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True] * 4, [True] * 3 + [False]]
  assert not batches[2]["mlm_labels"][3].any() and batches[2]["mlm_labels"][:3].any()
  full = next(train_iterator(records, fx.data_config(image_size=(16, 8), num_parallel_calls=1), 4, seed=0))
  assert "valid" not in full and train_iterator(records, fx.data_config(image_size=(16, 8)), 4, 0).steps_per_epoch == 2


def test_a_padded_short_batch_trains_like_the_unpadded_batch():
  """drop_last=False: the train step (model_loss + gradient) of the full `combined` preset with IRRA's SDM switched on
  as well (every term but ITC, which tests/test_loss_masks covers) on the short batch padded to B with the sampler's
  repeats and the pipeline's zeroed padding labels + ``valid`` equals the step on the short batch alone."""
  n, b, method = 5, 8, "combined"
  cfg = tiny_model_config(method)
  cfg["loss"]["sdm"] = 1.0
  cfg["model"]["clip"].update(vision_layers=1, text_layers=1)
  cfg["model"]["cross_layers"] = 1
  shape = batch_lib.BatchOptions((48, 16), load("cuhk", method).data.context_length, num_classes=3)
  short = batch_lib.fake_train_batch(shape, n, seed=1)
  assert len(set(short["pids"].tolist())) > 1 and short["mlm_labels"].any()
  rows = np.arange(b) % n  # samplers.StepIndexer.global_batch: the short batch cycled to B rows
  padded = {k: v[rows] for k, v in short.items()}
  padded["valid"] = np.arange(b) < n
  padded["mlm_labels"] = np.where(padded["valid"][:, None], padded["mlm_labels"], 0)
  options = method_options(cfg)
  model, loss = build_model(options), options.loss
  assert set(loss.active) == set(objectives.VALID_MASK_TERMS) - {"itc"}
  key = jax.random.key(0)
  params = jax.jit(lambda x: model.init({"params": key, "mining": key, "dropout": key}, x)["params"])(short)
  step = jax.jit(jax.value_and_grad(lambda p, x: objectives.model_loss(model, loss, p, x, jax.random.key(3)),
                                    has_aux=True))
  (total, terms), grads = step(params, short)
  (total_pad, terms_pad), grads_pad = step(params, padded)
  assert set(terms_pad) == set(terms) and set(loss.active) <= set(terms)
  for name in terms:
    np.testing.assert_allclose(terms_pad[name], terms[name], rtol=2e-5, atol=1e-7, err_msg=name)
  np.testing.assert_allclose(total_pad, total, rtol=2e-5)
  flat, flat_pad = jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_pad)
  scale = max(float(np.abs(np.asarray(g)).max()) for _, g in flat)  # e.g. attention key biases: 0 up to rounding
  for (path, g), g_pad in zip(flat, flat_pad):
    np.testing.assert_allclose(g_pad, g, rtol=1e-3, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
