"""Optimizer and schedule against independent float64 NumPy re-derivations of the reference recipe (docs/methods.md
§4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tpsearch_jax.training import optim


def _config(per_step=False, param_groups=optim.IRRA_GROUPS, lr=1e-5, num_epochs=60):
  return ml_collections.ConfigDict(dict(
      optim=dict(name="adam", lr=lr, b1=0.9, b2=0.999, eps=1e-3, weight_decay=4e-5, weight_decay_bias=0.0,
                 lr_factor=5.0, bias_lr_factor=2.0, param_groups=param_groups, grad_clip_norm=0.0),
      schedule=dict(name="cosine", num_epochs=num_epochs, warmup_epochs=5, warmup_factor=0.1, per_step=per_step)))


def _reference_factor(e: float, total=60, warmup=5, start=0.1) -> float:
  """The reference LRSchedulerWithWarmup (linear warm-up, cosine), written from the formula in float64."""
  if e < warmup:
    a = e / warmup
    return start * (1 - a) + a
  return 0.5 * (1 + math.cos(math.pi * (e - warmup) / (total - warmup)))


def test_schedule_matches_reference_per_epoch():
  steps_per_epoch = 7
  config = _config()
  schedule = optim.make_schedule(config.optim, config.schedule, steps_per_epoch)
  steps = np.arange(60 * steps_per_epoch)
  got = np.asarray(jax.vmap(schedule)(steps))
  want = np.asarray([1e-5 * _reference_factor(s // steps_per_epoch) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)
  # The published list: warm-up 0.1 … 0.82, 1.0 at the 6th epoch, ≈ 8e-4 at the last.
  first = got[::steps_per_epoch][:6] / 1e-5
  np.testing.assert_allclose(first, [0.1, 0.28, 0.46, 0.64, 0.82, 1.0], rtol=1e-5)
  assert 7.9e-4 < got[-1] / 1e-5 < 8.3e-4
  # constant within an epoch
  assert np.all(got[7:14] == got[7])


def test_schedule_per_step_uses_fractional_epoch():
  steps_per_epoch = 10
  config = _config(per_step=True)
  schedule = optim.make_schedule(config.optim, config.schedule, steps_per_epoch)
  for step in (0, 3, 25, 49, 50, 51, 377, 599):
    want = 1e-5 * _reference_factor(step / steps_per_epoch)
    np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5)


def test_param_group_labels_on_toy_tree():
  """``IRRA_GROUPS`` = IRRA's parameter-group rule (docs/methods.md §4); no rules = one group."""
  x = np.zeros((2, 2), np.float32)
  params = {
      "clip": {"visual": {"proj": x, "ln_post": {"scale": x, "bias": x},
                          "transformer": {"resblocks_0": {"attn": {"query": {"kernel": x, "bias": x}}}}},
               "text": {"token_embedding": {"embedding": x}}},
      "cross_former": {"cross_attn": {"kernel": x, "bias": x}, "ln_pre_t": {"scale": x}},
      "classifier": {"kernel": x, "bias": x},
      "mlm_head": {"dense": {"kernel": x, "bias": x}},
  }
  groups = optim.param_groups(params, _config().optim)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      groups, is_leaf=lambda t: isinstance(t, tuple))[0]}
  wd = 4e-5
  want = {
      "['clip']['visual']['proj']": (1.0, wd),
      "['clip']['visual']['ln_post']['scale']": (1.0, wd),
      "['clip']['visual']['ln_post']['bias']": (2.0, 0.0),
      "['clip']['visual']['transformer']['resblocks_0']['attn']['query']['kernel']": (1.0, wd),
      "['clip']['visual']['transformer']['resblocks_0']['attn']['query']['bias']": (2.0, 0.0),
      "['clip']['text']['token_embedding']['embedding']": (1.0, wd),
      "['cross_former']['cross_attn']['kernel']": (5.0, wd),
      "['cross_former']['cross_attn']['bias']": (2.0, 0.0),  # bias rule overrides the "cross" rule
      "['cross_former']['ln_pre_t']['scale']": (1.0, wd),  # IRRA name "ln_pre_t" has no "cross": base lr (§4)
      "['classifier']['kernel']": (5.0, wd),
      "['classifier']['bias']": (5.0, 0.0),  # classifier rule overrides the bias lr, keeps wd 0
      "['mlm_head']['dense']['kernel']": (5.0, wd),
      "['mlm_head']['dense']['bias']": (5.0, 0.0),
  }
  assert flat == want
  labels = optim.param_labels(params, _config().optim)
  assert labels["classifier"]["bias"] == "lr×5 wd0"
  single = optim.param_groups(params, _config(param_groups=()).optim)
  assert single["classifier"]["bias"] == (1.0, wd) and single["clip"]["visual"]["proj"] == (1.0, wd)


def _torch_adam_reference(params, grads_seq, lr_fn, groups, b1=0.9, b2=0.999, eps=1e-3):
  """PyTorch Adam with weight_decay (L2 into the gradient), per-parameter lr multiplier, float64."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    for k in p:
      mult, wd = groups[k]
      g = grads[k].astype(np.float64) + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      m_hat = m[k] / (1 - b1 ** t)
      v_hat = v[k] / (1 - b2 ** t)
      p[k] = p[k] - lr_fn(t - 1) * mult * m_hat / (np.sqrt(v_hat) + eps)
  return p


def test_update_matches_torch_adam_l2_reference():
  rng = np.random.default_rng(0)
  shapes = {"w": (3, 4), "b": (4,), "c": (4, 2)}
  params_np = {k: rng.normal(size=s).astype(np.float32) * 3 for k, s in shapes.items()}
  # large lr so the weight decay and group multipliers move the result well beyond float32 noise
  config = _config(lr=1e-2, num_epochs=4)
  config.optim.weight_decay = 0.5
  tree = lambda d: {"clip": {"dense": {"kernel": d["w"], "bias": d["b"]}}, "classifier": {"kernel": d["c"]}}
  params = jax.tree.map(jnp.asarray, tree(params_np))
  steps_per_epoch = 2
  tx = optim.create_optimizer(config.optim, config.schedule, steps_per_epoch)
  state = tx.init(params)
  grads_seq = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(6)]
  update = jax.jit(tx.update)
  for g in grads_seq:
    updates, state = update(jax.tree.map(jnp.asarray, tree(g)), state, params)
    params = jax.tree.map(lambda a, u: a + u, params, updates)

  lr_fn = lambda step: 1e-2 * _reference_factor(step // steps_per_epoch, total=4)
  want = _torch_adam_reference(params_np, grads_seq, lr_fn, {"w": (1.0, 0.5), "b": (2.0, 0.0), "c": (5.0, 0.5)})
  got = {"w": params["clip"]["dense"]["kernel"], "b": params["clip"]["dense"]["bias"],
         "c": params["classifier"]["kernel"]}
  for k in shapes:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-6, err_msg=k)
    assert np.abs(want[k] - params_np[k]).max() > 1e-2  # the parameters did move


def test_unknown_optimizer_and_schedule_rejected():
  config = _config()
  config.optim.name = "sgd"
  with pytest.raises(ValueError, match="only 'adam'"):
    optim.create_optimizer(config.optim, config.schedule, 10)
  config = _config()
  config.schedule.name = "linear"  # "step" (MultiStepLR) is a schedule now: pcc_paper_*
  with pytest.raises(ValueError, match="schedule.name"):
    optim.make_schedule(config.optim, config.schedule, 10)


def test_group_rules_regex_first_match_and_field_names():
  """Rules are (regex, lr_mult, wd) with numbers or optim field names; the first match wins; the start-up table
  counts tensors and parameters per rule."""
  params = {"clip": {"visual": {"proj": np.zeros((4, 8)), "ln_post": {"bias": np.zeros((8,))}}},
            "cross_former": {"ln_pre_t": {"scale": np.zeros((8,)), "bias": np.zeros((8,))}},
            "classifier": {"kernel": np.zeros((8, 3)), "bias": np.zeros((3,))}}
  config = _config(param_groups=((r"^classifier/", 10.0, 0.0), (r"cross", "lr_factor", "weight_decay"),
                                  (r"bias$", "bias_lr_factor", 0.5)))
  groups = optim.param_groups(params, config.optim)
  assert groups["classifier"]["kernel"] == (10.0, 0.0) and groups["classifier"]["bias"] == (10.0, 0.0)
  assert groups["cross_former"]["ln_pre_t"]["bias"] == (5.0, 4e-5)  # "cross" comes before "bias$"
  assert groups["clip"]["visual"]["ln_post"]["bias"] == (2.0, 0.5)
  assert groups["clip"]["visual"]["proj"] == (1.0, 4e-5)  # no rule: lr × 1, optim.weight_decay
  config.optim.lr_factor = 3.0  # a field-name multiplier follows the field
  assert optim.param_groups(params, config.optim)["cross_former"]["ln_pre_t"]["scale"] == (3.0, 4e-5)
  table = optim.group_table(params, config.optim).splitlines()
  counts = {line.split()[0]: tuple(int(x.replace(",", "")) for x in line.split()[-2:]) for line in table[1:]}
  assert counts == {"^classifier/": (2, 27), "cross": (2, 16), "bias$": (1, 8), "(no": (1, 32)}
  config.optim.param_groups = ((r"(", 1.0, 0.0),)
  with pytest.raises(ValueError, match=r"param_groups\[0\]: invalid regex"):
    optim.param_groups(params, config.optim)
  config.optim.param_groups = ((r"x", "no_such_field", 0.0),)
  with pytest.raises(ValueError, match="no_such_field"):
    optim.param_groups(params, config.optim)
