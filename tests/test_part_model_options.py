"""Part model switches (config.model.part): modality-specific K/V LayerNorms, stop-gradient foreground map, shifted
(non-negative) features under the map; the defaults are the lineage model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from tpsearch_jax.models.part_decoder import PartModel, PartOptions

B, GRID, W = 3, (6, 2), 16
BASE = PartOptions(num_queries=2, num_parts=3, heads=4)


def _inputs(seed=0):
  r = np.random.default_rng(seed)
  patches = r.standard_normal((B, GRID[0] * GRID[1], W)).astype(np.float32)
  tokens = r.standard_normal((B, 7, W)).astype(np.float32)
  valid = np.arange(7)[None] < np.array([[7], [5], [3]])
  return patches, tokens, valid


def _model(**changes):
  return PartModel(W, GRID, dataclasses.replace(BASE, **changes))


# Every model call is jitted: one compile per program instead of one per op (eager), the bulk of this file's time.
def _init(model):
  patches, tokens, valid = _inputs()
  return jax.jit(lambda p, t, v: model.init(jax.random.key(0), p, t, v, method=lambda m, p, t, v: (
      m.encode_image(p), m.encode_text(t, v))))(patches, tokens, valid)["params"]


def _image(model, params, patches):
  out, inter = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image", mutable=["intermediates"]))(
      params, patches)
  return out, inter["intermediates"]["image_memory"][0]


@pytest.mark.parametrize("features", ["signed", "shifted"])
def test_stripes_match_numpy(features):
  model = _model(foreground_features=features)
  params = _init(model)
  patches = _inputs()[0]
  out, memory = _image(model, params, patches)
  want = ref.foreground_stripes(memory, out["foreground"], GRID[0], GRID[1], 3, features)
  np.testing.assert_allclose(out["part"], want, rtol=1e-5, atol=1e-6)
  if features == "shifted":  # a uniform map leaves the features unchanged: the plain stripe max
    want_plain = ref.foreground_stripes(memory, np.ones((B, 12)), GRID[0], GRID[1], 3, "signed")
    np.testing.assert_allclose(ref.foreground_stripes(memory, np.ones((B, 12)), GRID[0], GRID[1], 3, "shifted"),
                               want_plain, atol=1e-12)


def test_stop_gradient_cuts_the_map_only():
  patches = _inputs()[0]
  grads = {}
  for mode in ("through", "stop"):
    model = _model(foreground_grad=mode)
    params = _init(model)
    loss = jax.jit(lambda q, p=params, m=model: jnp.sum(
        m.apply({"params": dict(p, coarse_queries=q)}, patches, method="encode_image")["part"] ** 2))
    grads[mode] = np.asarray(jax.grad(loss)(params["coarse_queries"]))
    if mode == "stop":
      np.testing.assert_allclose(loss(params["coarse_queries"]), loss_through, rtol=1e-6)  # same forward
    loss_through = loss(params["coarse_queries"])
  # the coarse queries reach the stripes only through the map
  assert np.abs(grads["through"]).max() > 1e-6 and not np.any(grads["stop"])


def test_modality_kv_norms():
  shared, modal = _model(), _model(kv_norm="modality")
  ps, pm = _init(shared), _init(modal)
  layer = pm["decoder"]["layers_0"]
  assert {"ln_kv_image", "ln_kv_text"} <= set(layer) and "ln_kv" not in layer
  # with both norms equal to the shared one, the outputs are the shared model's
  same = jax.tree.map(lambda x: x, ps)
  ln = same["decoder"]["layers_0"].pop("ln_kv")
  same["decoder"]["layers_0"].update(ln_kv_image=ln, ln_kv_text=ln)
  patches, tokens, valid = _inputs()
  run = {m: jax.jit(lambda p, m=m: (m.apply({"params": p}, patches, method="encode_image"),
                                    m.apply({"params": p}, tokens, valid, method="encode_text")))
         for m in (shared, modal)}
  for a, b in zip(jax.tree.leaves(run[shared](ps)), jax.tree.leaves(run[modal](same))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # changing the text norm moves the text outputs only
  moved = jax.tree.map(lambda x: x, same)
  moved["decoder"]["layers_0"]["ln_kv_text"] = {"scale": ln["scale"] * 2.0, "bias": ln["bias"] + 0.5}
  (img0, txt0), (img1, txt1) = run[modal](same), run[modal](moved)
  np.testing.assert_array_equal(img0["part"], img1["part"])
  assert np.abs(np.asarray(txt0["part"]) - np.asarray(txt1["part"])).max() > 1e-3


@pytest.mark.parametrize("field", ["kv_norm", "foreground_grad", "foreground_features"])
def test_unknown_choice_names_the_field(field):
  with pytest.raises(ValueError, match=f"config.model.part.{field} must be one of"):
    _init(_model(**{field: "bogus"}))
