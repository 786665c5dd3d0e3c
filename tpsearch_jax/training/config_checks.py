"""Validation and resolution of a run config before anything is built (no TensorFlow, no device work)."""

from __future__ import annotations

import os

import ml_collections
from absl import logging

from tpsearch_jax import sharding as shd
from tpsearch_jax.models import backbones, resolve_dtype
from tpsearch_jax.training import optim
from tpsearch_jax.user_errors import UserError

SELECT_CHOICES = ("val", "test", "none")


def resolve_config(config: ml_collections.ConfigDict, num_classes: int | None = None) -> ml_collections.ConfigDict:
  """Copy of ``config`` with its derived fields filled, then validated: "auto" dtype resolved,
  ``data.tokenizer_path`` from a BERT folder in ``init.bert``, and (with ``num_classes``) ``model.num_classes``
  (``fill_num_classes``). Resolving a resolved config changes nothing."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.dtype = resolve_dtype(c.model.dtype)
    bert_init = c.init.get("bert")
    if (c.model.get("backbone", "clip") != "clip" and not c.data.get("tokenizer_path") and bert_init
        and os.path.isdir(bert_init)):
      c.data.tokenizer_path = bert_init  # the folder's vocab.txt
  if num_classes is not None:
    c = fill_num_classes(c, num_classes)
  _check_text_side(c)
  h, w = c.data.image_size
  p = c.model.clip.patch_size
  if c.model.get("backbone", "clip") != "clip":
    p = 1  # the backbone checks its own stride (config.model.vit.patch_size / the ResNet stride) when it is built
  if h % p or w % p:
    raise UserError(f"config.data.image_size={tuple(c.data.image_size)} is not divisible by the patch size {p} "
                     "(config.model.clip.patch_size)")
  if tuple(c.model.clip.image_size) != tuple(c.data.image_size):
    raise UserError(f"config.model.clip.image_size={tuple(c.model.clip.image_size)} differs from "
                     f"config.data.image_size={tuple(c.data.image_size)}")
  if c.model.get("backbone", "clip") == "clip" and c.data.context_length != c.model.clip.context_length:
    raise UserError(f"config.data.context_length={c.data.context_length} differs from "
                     f"config.model.clip.context_length={c.model.clip.context_length}")
  select = c.eval.select_on
  if select is None:
    raise UserError(f"config.eval.select_on is not set. {c.data.name or 'This dataset'} needs an explicit choice: "
                     "--config.eval.select_on=none (report the last checkpoint) or --config.eval.select_on=test "
                     "(reproduction of the published protocol: selects the checkpoint on the TEST set)")
  if select not in SELECT_CHOICES:
    raise UserError(f"config.eval.select_on={select!r}: expected one of {SELECT_CHOICES}")
  return c


def fill_num_classes(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
  """Copy of ``config`` with ``model.num_classes`` = the training split's identity count (a set value must agree)."""
  if config.model.num_classes is not None and config.model.num_classes != num_classes:
    raise UserError(f"config.model.num_classes={config.model.num_classes} but the training split has {num_classes} "
                     "identities; leave it unset to use the data's count")
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.num_classes = int(num_classes)
  return c


def _check_text_side(c: ml_collections.ConfigDict) -> None:
  """Tokenizer vs backbone, BERT context length, frozen ResNet statistics (reads only)."""
  backbone, tokenizer = c.model.get("backbone", "clip"), c.data.get("tokenizer", "clip") or "clip"
  want = "clip" if backbone == "clip" else "bert"
  if tokenizer != want:
    raise UserError(f"config.data.tokenizer={tokenizer!r} does not fit config.model.backbone={backbone!r}: its ids "
                     f"need the {want!r} tokenizer")
  if backbone == "clip":
    return
  if c.data.context_length > c.model.bert.max_position_embeddings:
    raise UserError(f"config.data.context_length={c.data.context_length} exceeds BERT's "
                     f"config.model.bert.max_position_embeddings={c.model.bert.max_position_embeddings}")
  _check_frozen_stats(c)


def _check_frozen_stats(c: ml_collections.ConfigDict) -> None:
  """With the ResNet backbone, the BatchNorm statistics must get lr × 0 and no weight decay from the param groups."""
  if c.model.get("backbone", "clip") != "rn50_bert":
    return
  lr, wd = optim.param_group(backbones.STATS_PROBE, c.optim)
  if lr != 0 or wd != 0:
    raise ValueError(f"config.optim.param_groups give the frozen ResNet BatchNorm statistics "
                     f"('{backbones.FROZEN_STATS}') lr x{lr:g} and weight decay {wd:g}; they must stay fixed: put "
                     f"(r'{backbones.FROZEN_STATS}', 0.0, 0.0) first (optim.PAPER_GROUPS does)")


def warn_if_test_selection(config) -> None:
  """Loud log when the checkpoint is selected on the test split."""
  if config.eval.select_on == "test":
    msg = ("config.eval.select_on='test': the checkpoint is SELECTED ON THE TEST SET (the IRRA/FMFA reproduction "
           "protocol). Test numbers from this run are optimistic and not a held-out estimate.")
    logging.warning("=" * 100)
    logging.warning(msg)
    logging.warning("=" * 100)


def check_parallelism(config, mesh) -> None:
  """Batch sizes must split evenly over the devices and processes (raised before anything compiles)."""
  shd.check_batch_size(int(config.train.batch_size), mesh, "config.train.batch_size")
  shd.check_batch_size(int(config.eval.batch_size), mesh, "config.eval.batch_size")
