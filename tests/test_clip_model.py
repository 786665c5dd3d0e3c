"""The Flax CLIP towers: full-size ViT-B/16 shapes and forward, causal text mask, EOT pooling, bf16, remat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpsearch_jax.models.clip import CLIP, CLIPConfig, tiny_config


def _block(d: int, h: int | None = None) -> int:
  """Pre-LN block: 2 LayerNorms (4d) + q,k,v,out with biases (4d² + 4d) + MLP d→h→d with biases (2dh + h + d).

  h = 4d (the default) gives 12d² + 13d."""
  h = 4 * d if h is None else h
  return 4 * d + 4 * d * d + 4 * d + 2 * d * h + h + d


def _clip_param_count(patch, grid_cells, width, layers, vocab, context, text_width, text_layers, embed,
                      vision_mlp=None, text_mlp=None):
  vision = 3 * patch * patch * width + width + (1 + grid_cells) * width + 2 * width \
      + layers * _block(width, vision_mlp) + 2 * width + width * embed
  text = vocab * text_width + context * text_width + text_layers * _block(text_width, text_mlp) + 2 * text_width \
      + text_width * embed
  return vision + text


def _abstract_params(config: CLIPConfig):
  h, w = config.image_size
  return jax.eval_shape(CLIP(config).init, jax.random.key(0), jnp.zeros((1, h, w, 3)),
                        jnp.zeros((1, config.context_length), jnp.int32))["params"]


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_param_counts_match_the_architecture_formula():
  # OpenAI's ViT-B/32 has 151,277,313 parameters including the learned logit scale, which this model does not hold.
  b32 = CLIPConfig(image_size=(224, 224), patch_size=32)
  assert _count(_abstract_params(b32)) == _clip_param_count(32, 7 * 7, 768, 12, 49408, 77, 512, 12, 512)
  assert _count(_abstract_params(b32)) == 151_277_313 - 1
  b16 = CLIPConfig()  # ViT-B/16 at 384x128: a 24x8 grid
  assert _count(_abstract_params(b16)) == _clip_param_count(16, 24 * 8, 768, 12, 49408, 77, 512, 12, 512)
  assert _block(768) == 12 * 768 ** 2 + 13 * 768


def test_mlp_widths_follow_the_config_per_tower():
  c = tiny_config(vision_mlp_dim=72, text_mlp_dim=40)
  tree = _abstract_params(c)
  assert tree["visual"]["transformer"]["resblocks_1"]["mlp"]["c_fc"]["kernel"].shape == (32, 72)
  assert tree["visual"]["transformer"]["resblocks_1"]["mlp"]["c_proj"]["kernel"].shape == (72, 32)
  assert tree["text"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape == (32, 40)
  assert _count(tree) == _clip_param_count(8, 4 * 2, 32, 2, 49408, 77, 32, 2, 16, vision_mlp=72, text_mlp=40)
  assert _count(_abstract_params(tiny_config(vision_mlp_dim=128, text_mlp_dim=128))) == _count(
      _abstract_params(tiny_config()))  # None means 4 x width
  for bad in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="vision_mlp_dim must be a positive int"):
      tiny_config(vision_mlp_dim=bad)


def test_vit_b16_384x128_jitted_forward():
  config = CLIPConfig()
  params = _random_params(config)
  model = CLIP(config)
  rng = np.random.default_rng(1)
  images = rng.standard_normal((1, 384, 128, 3), dtype=np.float32)
  ids = np.zeros((1, 77), np.int32)
  ids[0, :4] = [49406, 320, 1237, 49407]
  (img_tok, img_pool), (txt_tok, txt_pool) = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))(
      params, images, ids)
  assert img_tok.shape == (1, 193, 512) and img_pool.shape == (1, 512)
  assert txt_tok.shape == (1, 77, 512) and txt_pool.shape == (1, 512)
  assert all(np.isfinite(np.asarray(x)).all() for x in (img_tok, txt_tok))
  np.testing.assert_array_equal(img_pool, img_tok[:, 0])
  np.testing.assert_array_equal(txt_pool, txt_tok[:, 3])


def _random_params(config: CLIPConfig, seed: int = 0):
  """Random float32 params in the tree of ``CLIP(config).init`` (compiling init costs seconds of CPU per test)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape, dtype=np.float32)
    return 1.0 + 0.1 * noise if path[-1].key == "scale" else 0.2 * noise

  return jax.tree_util.tree_map_with_path(draw, _abstract_params(config))


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  return config, _random_params(config)


def _text(config, params, ids):
  return jax.jit(lambda p, t: CLIP(config).apply({"params": p}, t, method="encode_text"))(params, ids)


def test_text_mask_is_causal(tiny):
  config, params = tiny
  ids = np.zeros((1, 77), np.int32)
  ids[0, :8] = [49406, 11, 22, 33, 44, 55, 66, 49407]
  changed = ids.copy()
  changed[0, 4] = 999
  before, _ = _text(config, params, ids)
  after, _ = _text(config, params, changed)
  np.testing.assert_allclose(after[0, :4], before[0, :4], atol=1e-6, rtol=0)
  assert (np.abs(np.asarray(after[0, 4:8]) - np.asarray(before[0, 4:8])).max(axis=-1) > 1e-3).all()


def test_eot_pooling_takes_the_first_largest_id(tiny):
  config, params = tiny
  ids = np.zeros((3, 77), np.int32)
  ids[0, :5] = [49406, 10, 20, 30, 49407]  # EOT at 4
  ids[1, :2] = [49406, 49407]  # empty caption: EOT at 1
  ids[2, :6] = [49406, 49407, 5, 49407, 7, 8]  # two EOTs: the first one (1) is pooled
  tokens, pooled = _text(config, params, ids)
  tokens, pooled = np.asarray(tokens), np.asarray(pooled)
  for row, pos in enumerate((4, 1, 1)):
    np.testing.assert_array_equal(pooled[row], tokens[row, pos])
  assert np.abs(pooled[2] - tokens[2, 3]).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params(tiny):
  config, params = tiny
  cfg16 = tiny_config(dtype=jnp.bfloat16)
  params16 = jax.eval_shape(CLIP(cfg16).init, jax.random.key(0), jnp.zeros((1, 32, 16, 3)), np.zeros((1, 77), np.int32))
  assert {x.dtype for x in jax.tree.leaves(params16)} == {jnp.dtype(jnp.float32)}
  images = np.random.default_rng(1).standard_normal((2, 32, 16, 3)).astype(np.float32)
  ids = np.zeros((2, 77), np.int32)
  ids[:, :4] = [49406, 15, 16, 49407]
  run = lambda cfg: jax.jit(lambda p: CLIP(cfg).apply({"params": p}, images, ids))(params)
  out16, out32 = run(cfg16), run(config)
  assert {x.dtype for x in jax.tree.leaves(out16)} == {jnp.dtype(jnp.bfloat16)}
  for a, b in zip(jax.tree.leaves(out16), jax.tree.leaves(out32)):
    b = np.asarray(b)
    err = np.abs(np.asarray(a, np.float32) - b).max() / np.abs(b).max()
    assert 0 < err < 5e-2


def test_remat_gives_the_same_outputs_and_gradients(tiny):
  config, params = tiny
  images = np.random.default_rng(2).standard_normal((2, 32, 16, 3)).astype(np.float32)
  ids = np.zeros((2, 77), np.int32)
  ids[:, :5] = [49406, 15, 16, 17, 49407]

  def loss(p, cfg):
    (it, ip), (tt, tp) = CLIP(cfg).apply({"params": p}, images, ids)
    return jnp.sum(ip * tp) + jnp.mean(it ** 2) + jnp.mean(tt ** 2), (it, tt)

  remat_cfg = tiny_config(remat=True)
  remat_params = jax.eval_shape(CLIP(remat_cfg).init, jax.random.key(0), images, ids)["params"]
  assert jax.tree.structure(remat_params) == jax.tree.structure(params)
  (plain, plain_out), plain_grad = jax.jit(jax.value_and_grad(lambda p: loss(p, config), has_aux=True))(params)
  (remat, remat_out), remat_grad = jax.jit(jax.value_and_grad(lambda p: loss(p, remat_cfg), has_aux=True))(params)
  np.testing.assert_allclose(remat, plain, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), remat_out, plain_out)
  # Recomputation may fuse differently in the backward pass: equal up to float32 rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), remat_grad, plain_grad)
