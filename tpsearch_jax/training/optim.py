"""Optimizer and learning-rate schedule of the IRRA/FMFA recipe (docs/methods.md §4), in optax.

The reference uses ``torch.optim.Adam(weight_decay=wd)``: the decay is an L2 term *added to the gradient before the
Adam moments* (not AdamW's decoupled decay), so it is reproduced here as ``g + wd·p`` ahead of ``scale_by_adam``.

Parameter groups are rules in the config, ``config.optim.param_groups``: a sequence of ``(regex, lr_mult, wd)``
matched with ``re.search`` against the parameter path joined by "/" (e.g. ``clip/visual/proj``, ``classifier/bias``);
the first rule that matches decides the parameter's lr multiplier and weight decay, an unmatched parameter gets lr × 1
and ``optim.weight_decay``. ``lr_mult`` / ``wd`` are numbers or names of ``config.optim`` fields (``"lr_factor"``,
``"weight_decay_bias"`` …), so the rules follow a command-line change of those fields. An empty sequence is one
group (FMFA HEAD: every parameter at lr, wd on all of them, biases included).

``IRRA_GROUPS`` is IRRA's ``solver/build.py:build_optimizer`` (anosorae/IRRA @cfc2378; docs/methods.md §4), whose rules
test substrings of PyTorch parameter names, later rules overriding earlier ones:

  1. every parameter: lr × 1, wd = ``optim.weight_decay``;
  2. name contains "cross" (``cross_attn.*``, ``cross_modal_transformer.*`` = our ``cross_former/cross_attn/*``,
     ``cross_former/transformer/*``): lr × ``optim.lr_factor``. The cross-former's own LayerNorms ``ln_pre_t``,
     ``ln_pre_i``, ``ln_post`` have no "cross" in their IRRA names and stay at lr × 1;
  3. name contains "bias": lr × ``optim.bias_lr_factor``, wd = ``optim.weight_decay_bias`` (overrides 2);
  4. name contains "classifier" or "mlm_head": lr × ``optim.lr_factor``, wd unchanged (so their biases: ×5, wd 0).

``PAPER_GROUPS`` (pcc_paper_vit / pcc_paper_rn50; LGUR's ``train_mydecoder_pixelvit_txtimg_3_bert.py``,
ZhiyinShao-H/LGUR): the frozen ResNet BatchNorm statistics and the BERT tower (frozen in LGUR) at lr × 0, the image
backbone and the part model at lr × ``lr_factor`` (0.1 there: 1e-4), projections and classifier at lr × 1 (1e-3).

``NEW_MODULE_GROUPS`` (pcc, combined; our choice, no reference) gives every module outside ``params["clip"]`` the
×``lr_factor`` of rule 2, with rules 3 and 4 as above.

The schedule multiplies the base lr by a factor of the epoch e: linear warm-up from ``warmup_factor`` over
``warmup_epochs`` epochs, then a half cosine that reaches 0 at ``num_epochs`` (never at the last epoch), or with
``schedule.name="step"`` ×``gamma`` at each of ``milestones`` (PyTorch MultiStepLR: e ≥ 20 → 0.1, e ≥ 40 → 0.01 …). The reference
sets it once per epoch (``schedule.per_step=False``); ``per_step=True`` uses the fractional epoch step/steps_per_epoch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["IRRA_GROUPS", "NEW_MODULE_GROUPS", "PAPER_GROUPS", "create_optimizer", "group_rules", "group_table", "lr_factor",
           "make_schedule", "param_group", "param_groups", "param_labels", "path_name"]

PyTree = Any
Rule = tuple[str, Any, Any]

IRRA_GROUPS: tuple[Rule, ...] = (
    (r"^(classifier|mlm_head)/.*bias", "lr_factor", "weight_decay_bias"),
    (r"^(classifier|mlm_head)/", "lr_factor", "weight_decay"),
    (r"bias", "bias_lr_factor", "weight_decay_bias"),
    (r"^cross_former/(cross_attn|transformer)/", "lr_factor", "weight_decay"),
)

NEW_MODULE_GROUPS: tuple[Rule, ...] = IRRA_GROUPS[:3] + ((r"^(?!clip/)", "lr_factor", "weight_decay"),)

PAPER_GROUPS: tuple[Rule, ...] = (
    (r"^image_backbone/.*/(mean|var)$", 0.0, 0.0),  # frozen BatchNorm statistics (models/resnet)
    (r"^text_backbone/", 0.0, 0.0),  # BERT, frozen as in LGUR
    (r"^(image_backbone|part_model)/", "lr_factor", "weight_decay"),
)

SCHEDULES = ("cosine", "constant", "step")


def _path_names(path) -> tuple[str, ...]:
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def path_name(path) -> str:
  """A tree path (jax key path) → "clip/visual/proj"."""
  return "/".join(_path_names(path))


def _value(v, optim_config, where: str) -> float:
  if isinstance(v, str):
    if v not in optim_config:
      raise ValueError(f"{where}: {v!r} is neither a number nor a config.optim field")
    return float(optim_config[v])
  return float(v)


def group_rules(optim_config) -> tuple[tuple[re.Pattern, float, float, str], ...]:
  """``config.optim.param_groups`` → ((compiled regex, lr multiplier, weight decay, regex text), ...)."""
  rules = optim_config.param_groups
  if isinstance(rules, (bool, str)) or not isinstance(rules, Sequence):
    raise ValueError(f"config.optim.param_groups={rules!r}: expected a sequence of (regex, lr_mult, weight_decay)")
  out = []
  for i, rule in enumerate(rules):
    where = f"config.optim.param_groups[{i}]"
    if len(rule) != 3:
      raise ValueError(f"{where}={rule!r}: expected (regex, lr_mult, weight_decay)")
    pattern, lr, wd = rule
    try:
      compiled = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{where}: invalid regex {pattern!r}: {e}") from e
    out.append((compiled, _value(lr, optim_config, where), _value(wd, optim_config, where), pattern))
  return tuple(out)


def _match(name: str, rules, optim_config) -> tuple[int, float, float]:
  for i, (pattern, lr, wd, _) in enumerate(rules):
    if pattern.search(name):
      return i, lr, wd
  return -1, 1.0, float(optim_config.weight_decay)


def param_group(names: tuple[str, ...], optim_config) -> tuple[float, float]:
  """(lr multiplier, weight decay) of the parameter at path ``names`` (e.g. ("clip", "visual", "proj"))."""
  _, lr, wd = _match("/".join(names), group_rules(optim_config), optim_config)
  return lr, wd


def group_table(params: PyTree, optim_config) -> str:
  """A text table: each rule with its lr multiplier, weight decay and how many tensors / parameters it caught."""
  rules = group_rules(optim_config)
  counts = np.zeros((len(rules) + 1, 2), np.int64)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    i, _, _ = _match(path_name(path), rules, optim_config)
    counts[i] += (1, int(np.prod(leaf.shape)))
  rows = [(f"{r[3]}", r[1], r[2], *counts[i]) for i, r in enumerate(rules)]
  rows.append(("(no rule: default)", 1.0, float(optim_config.weight_decay), *counts[-1]))
  width = max(len(r[0]) for r in rows)
  lines = [f"{'rule':<{width}}  {'lr×':>6} {'wd':>9} {'tensors':>8} {'params':>12}"]
  lines += [f"{n:<{width}}  {lr:6g} {wd:9.3g} {t:8d} {p:12,d}" for n, lr, wd, t, p in rows]
  return "\n".join(lines)


def param_groups(params: PyTree, optim_config) -> PyTree:
  """Tree like ``params`` whose leaves are (lr multiplier, weight decay) tuples."""
  return jax.tree_util.tree_map_with_path(lambda p, _: param_group(_path_names(p), optim_config), params)


def param_labels(params: PyTree, optim_config) -> PyTree:
  """Tree like ``params`` whose leaves are readable group labels, e.g. "lr×5 wd4e-05"."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: "lr×{:g} wd{:g}".format(*param_group(_path_names(p), optim_config)), params)


def lr_factor(t, num_epochs: int, warmup_epochs: int, warmup_factor: float, name: str = "cosine", per_epoch: int = 1,
              milestones: tuple[int, ...] = (), gamma: float = 0.1):
  """Schedule factor at epoch t/per_epoch (t scalar or array, int or float) → same shape, float32.

  "step": gamma ** (number of ``milestones`` ≤ e) after the warm-up.

  The cosine is evaluated as sin²(π/2·(E − e)/(E − w)) = ½(1 + cos(π(e − w)/(E − w))), with E − e formed from the
  integer t, so the small values of the last epochs keep full float32 relative precision.
  """
  t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, float(num_epochs * per_epoch))
  e = t / per_epoch
  if warmup_epochs > 0:
    alpha = e / warmup_epochs
    warm = warmup_factor * (1.0 - alpha) + alpha
  else:
    warm = jnp.ones_like(e)
  if name == "cosine":
    span = max(num_epochs - warmup_epochs, 1)
    remaining = (float(num_epochs * per_epoch) - t) / per_epoch
    after = jnp.sin(0.5 * math.pi * remaining / span) ** 2
  elif name == "constant":
    after = jnp.ones_like(e)
  elif name == "step":
    passed = sum((e >= m).astype(jnp.float32) for m in milestones) if milestones else jnp.zeros_like(e)
    after = jnp.asarray(gamma, jnp.float32) ** passed
  else:
    raise ValueError(f"config.schedule.name={name!r}: expected one of {SCHEDULES}")
  return jnp.where(e < warmup_epochs, warm, after)


def make_schedule(optim_config, schedule_config, steps_per_epoch: int) -> Callable[[Any], jax.Array]:
  """Learning rate as a function of the optimizer step (int scalar) → float32 scalar (base group, lr × 1), from the
  ``config.optim`` / ``config.schedule`` sections (``Options.optim`` / ``Options.schedule``)."""
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
  s, base = schedule_config, float(optim_config.lr)
  if s.name not in SCHEDULES:
    raise ValueError(f"config.schedule.name={s.name!r}: expected one of {SCHEDULES}")
  args = (int(s.num_epochs), int(s.warmup_epochs), float(s.warmup_factor), s.name)
  step_args = dict(milestones=tuple(int(m) for m in s.get("milestones", ())), gamma=float(s.get("gamma", 0.1)))

  def schedule(step):
    step = jnp.asarray(step)
    if s.per_step:
      return base * lr_factor(step, *args, per_epoch=steps_per_epoch, **step_args)
    return base * lr_factor(step // steps_per_epoch, *args, **step_args)

  return schedule


def _add_l2_by_group(optim_config) -> optax.GradientTransformation:
  """g ← g + wd(path)·p, the PyTorch-Adam ``weight_decay`` (L2 in the gradient)."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("the L2 weight-decay step needs params: call tx.update(grads, state, params)")

    rules = group_rules(optim_config)

    def add(path, g, p):
      wd = _match(path_name(path), rules, optim_config)[2]
      return g + wd * p if wd else g

    return jax.tree_util.tree_map_with_path(add, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _scale_by_group_lr(optim_config) -> optax.GradientTransformation:
  """u ← u · lr_mult(path)."""

  def update_fn(updates, state, params=None):
    del params

    rules = group_rules(optim_config)

    def scale(path, u):
      m = _match(path_name(path), rules, optim_config)[1]
      return u * m if m != 1.0 else u

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def create_optimizer(optim_config, schedule_config, steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam(b1, b2, eps) with L2 decay, per-group lr multipliers and the epoch schedule, from the ``config.optim`` /
  ``config.schedule`` sections (``Options.optim`` / ``Options.schedule``)."""
  o = optim_config
  if o.name != "adam":
    raise ValueError(f"config.optim.name={o.name!r}: only 'adam' (the reference optimizer) is implemented")
  parts = []
  if o.grad_clip_norm and o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(o.grad_clip_norm)))
  parts += [
      _add_l2_by_group(o),
      optax.scale_by_adam(b1=float(o.b1), b2=float(o.b2), eps=float(o.eps)),
      _scale_by_group_lr(o),
      optax.scale_by_learning_rate(make_schedule(o, schedule_config, steps_per_epoch)),
  ]
  return optax.chain(*parts)
