"""The analytic FLOP count against XLA's own HLO cost analysis.

XLA counts 2·m·n·k per dot/convolution plus one FLOP per element of most element-wise ops; the analytic count has
only the matmuls. So XLA's number must be at least the analytic one, and above it by the element-wise share: ≈ 10–20
element-wise FLOPs per activation element (LayerNorm, bias, residual, QuickGELU, softmax) against 2·width matmul
FLOPs per element per projection. That share is < 1 % at the ViT-B/16 widths (512/768) and a few % at width 64–128,
which sets the tolerances below. A missing or double-counted component (a text pass, the 49,408-way MLM head, an
attention T² term, the backward factor) moves the ratio by far more than these tolerances.

XLA's cost analysis counts a while-loop body once, whatever the trip count, so the EFA check uses one loop iteration.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from tpsearch_jax import losses, objectives
from tpsearch_jax.bench import flops
from tpsearch_jax.configs import base
from tpsearch_jax.models.clip import CLIP, CLIPConfig, ResidualAttentionBlock
from tpsearch_jax.models import build_model
from tpsearch_jax.batch import fake_train_batch as example_batch
from tpsearch_jax.training.options import run_options


def _default_config(method: str):
  config = base.get_config(method)
  config.model.dtype = "float32"
  config.model.num_classes = 11003
  return config


def _hlo_flops(fn, *args) -> float:
  """FLOPs of fn(*args) from the un-optimised HLO (no compilation needed)."""
  return float(jax.jit(fn).lower(*args).cost_analysis()["flops"])


@pytest.mark.parametrize("method", ["irra", "pcc"])
def test_vit_b16_train_step_matches_xla(method):
  """Full-size ViT-B/16 @ 384×128 model (11,003 classes), batch 2: forward and forward+backward within 1 %."""
  config = _default_config(method)
  # XLA's cost analysis of the masked MLM head's lax.cond counts its costlier (full-head) branch; compare the full.
  config.loss.mlm_head = "full"
  options = run_options(config)
  model = build_model(options)
  b = 2
  batch = {k: jnp.asarray(v) for k, v in example_batch(options.batch_options, b).items()}
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1), "mining": jax.random.key(2)}
  params = jax.eval_shape(lambda: model.init(rngs, batch, train=True))["params"]

  def loss(p, batch):
    return objectives.model_loss(model, options.loss, p, batch, jax.random.key(0))[0]

  counted = flops.train_step_flops(options, b)
  fwd = _hlo_flops(loss, params, batch)
  assert 1.0 <= fwd / counted.forward_total < 1.01, (fwd, counted.forward_total)
  if method == "irra":  # the backward factors (2×, 1× for the patch embedding); one method suffices for time
    train = _hlo_flops(jax.value_and_grad(loss), params, batch)
    assert 1.0 <= train / counted.train_total < 1.01, (train, counted.train_total)


def test_attention_block_long_sequence_matches_xla():
  """T = 256 ≫ width 64, so the T² score and weighted-sum terms are ~40 % of the block: both must be counted."""
  b, t, d = 2, 256, 64
  block = ResidualAttentionBlock(d, 1)  # one head: head_dim 64 keeps softmax (≈5 FLOPs per score) at ≈2 % of the T² matmuls
  x = jnp.ones((b, t, d))
  params = jax.eval_shape(lambda: block.init(jax.random.key(0), x))
  xla = _hlo_flops(lambda p, x: block.apply(p, x), params, x)
  analytic = b * sum(flops.transformer(t, d, 1).values())
  assert 1.0 <= xla / analytic < 1.04, (xla, analytic)


def test_clip_towers_forward_and_backward_match_xla():
  """Width-128 towers on a 6×2 grid + 77 tokens: forward, and the 3× rule with the patch-embedding exception."""
  cfg = CLIPConfig(embed_dim=64, image_size=(48, 16), patch_size=8, vision_width=128, vision_layers=2,
                   vision_heads=4, vocab_size=1000, text_width=128, text_layers=2, text_heads=4)
  model = CLIP(cfg)
  b = 4
  images, ids = jnp.ones((b, 48, 16, 3)), jnp.ones((b, 77), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), images, ids))

  def loss(p, images, ids):
    (_, v), (_, t) = model.apply(p, images, ids)
    return jnp.sum(v * t)

  forward = {**flops._prefixed("vision", flops.vision_tower(cfg), b),  # pylint: disable=protected-access
             **flops._prefixed("text", flops.text_tower(cfg), b)}  # pylint: disable=protected-access
  counted = flops.StepFlops(forward=forward, batch_size=b)
  fwd = _hlo_flops(loss, params, images, ids)
  train = _hlo_flops(jax.value_and_grad(loss), params, images, ids)
  assert 1.0 <= fwd / counted.forward_total < 1.03, (fwd, counted.forward_total)
  assert 1.0 <= train / counted.train_total < 1.03, (train, counted.train_total)


def test_efa_terms_match_xla():
  """EFA at B = 16 (the B² set-similarity term dominates the B-linear aggregation), one lax.map iteration."""
  b, length, patches, d = 16, 77, 24, 64
  text, image = jnp.ones((b, length, d)), jnp.ones((b, patches, d))
  xla = _hlo_flops(lambda t, v: losses.efa_loss(t, v, row_block=b), text, image)
  analytic = (b * (flops.matmul(length, patches, d) + flops.matmul(length, d, patches))
              + b * b * (flops.matmul(length, length, d) + flops.matmul(patches, length, d)))
  assert 1.0 <= xla / analytic < 1.03, (xla, analytic)


def test_peak_table_prefers_the_specific_device_name():
  """'TPU v5 lite' (v5e) must not take the v5p entry, an H100 PCIe not the SXM one; CPUs have no peak."""
  assert flops.peak_flops("TPU v5 lite") == pytest.approx(197e12)
  assert flops.peak_flops("TPU v5p") == pytest.approx(459e12)
  assert flops.peak_flops("NVIDIA H100 PCIe") < flops.peak_flops("NVIDIA H100 80GB HBM3")
  assert flops.peak_flops("cpu") is None


def test_patch_embedding_backward_is_weight_gradient_only():
  """Images need no gradient, so XLA's backward of the patch convolution is one forward's worth (total 2×, not 3×)."""
  cfg = CLIPConfig(image_size=(64, 32), patch_size=16, vision_width=64)
  conv = nn.Conv(cfg.vision_width, (16, 16), strides=(16, 16), padding="VALID", use_bias=False)
  b = 4
  images = jnp.ones((b, 64, 32, 3))
  params = jax.eval_shape(lambda: conv.init(jax.random.key(0), images))
  loss = lambda p, x: jnp.sum(conv.apply(p, x))  # noqa: E731
  counted = flops.StepFlops(forward={"vision/patch_embed": b * flops.vision_tower(cfg)["patch_embed"]}, batch_size=b)
  fwd = _hlo_flops(loss, params, images)
  train = _hlo_flops(jax.value_and_grad(loss), params, images)
  assert fwd == pytest.approx(counted.forward_total, rel=0.01)
  assert train == pytest.approx(counted.train_total, rel=0.01)
