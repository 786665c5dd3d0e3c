"""Retrieval models (clip, irra, fmfa, pcc, combined): contract, wiring, part model, cross-former, sharded training.

Reference values come from float64 numpy re-derivations of the equations (module docstrings of
tpsearch_jax/models/{cross_former,part_decoder,retrieval}.py) applied to the parameters, never from the code under test.
All methods share one set of parameters: the "combined" model holds every module, and each other method's parameter
tree is checked to be a sub-tree of it (test_param_trees).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tpsearch_jax import objectives
from tpsearch_jax.models import CLIP, build_model, method_options, method_preset, tiny_model_config
from tpsearch_jax.models.cross_former import CrossFormer, MLMHead
from tpsearch_jax.models.part_decoder import Decoder, foreground_map, stripe_bounds

VOCAB = 1000  # small vocabulary keeps the MLM head cheap; SOT/EOT/MASK are its last ids
SOT, EOT, MASK = VOCAB - 2, VOCAB - 1, VOCAB - 3
B, NUM_CLASSES = 8, 8
PIDS = np.array([0, 0, 1, 1, 2, 3, 5, 5], np.int32)
METHODS = ("clip", "irra", "fmfa", "fmfa_paper", "pcc", "combined")
EMBED_WEIGHTS = dict(global_=2.0, coarse=0.5, part=1.0)


def _config(method: str, dtype: str = "float32") -> dict:
  cfg = tiny_model_config(method, num_classes=NUM_CLASSES, vocab_size=VOCAB, dtype=dtype)
  cfg["model"]["clip"].update(vision_layers=1, text_layers=1)
  cfg["model"]["cross_layers"] = 1
  cfg["model"]["embed_weights"] = dict(EMBED_WEIGHTS)
  for i, name in enumerate(("sdm", "asdm", "itc", "id", "mlm", "efa", "triplet", "cmr")):
    if cfg["loss"][name]:
      cfg["loss"][name] = 1.0 + 0.25 * i  # distinct weights so the total checks the weighting
  return cfg


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  r = np.random.default_rng(seed)
  ids = np.zeros((B, 77), np.int32)
  mlm_ids, labels = ids.copy(), ids.copy()
  for b in range(B):
    n = int(r.integers(6, 20))
    ids[b, 0], ids[b, n] = SOT, EOT
    ids[b, 1:n] = r.integers(1, MASK, n - 1)
    mlm_ids[b] = ids[b]
    picked = np.flatnonzero(r.random(n - 1) < 0.3) + 1
    picked = picked if picked.size else np.array([1])
    labels[b, picked] = ids[b, picked]
    mlm_ids[b, picked] = MASK
  return {"images": r.standard_normal((B, 48, 16, 3)).astype(np.float32), "caption_ids": ids,
          "mlm_ids": mlm_ids, "mlm_labels": labels, "pids": PIDS.copy(), "image_ids": np.arange(B, dtype=np.int32)}


def _rngs(seed: int = 0) -> dict:
  return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1), "mining": jax.random.key(seed + 2)}


@functools.cache
def _model(method: str, dtype: str = "float32"):
  return build_model(method_options(_config(method, dtype)))


@functools.cache
@functools.cache
def _all_params():
  """Initialised parameters of the "combined" model (a super-set of every other method's tree)."""
  model = _model("combined")
  return jax.jit(lambda b: model.init(_rngs(), b, train=True))(_batch())["params"]


@functools.cache
def _params(method: str) -> dict:
  shapes = jax.eval_shape(lambda b: _model(method).init(_rngs(), b, train=True), _batch())["params"]
  return {k: _all_params()[k] for k in shapes}


def _loss_options(method: str):
  return method_options(_config(method)).loss


@functools.cache
def _forward_fn(method: str, dtype: str = "float32"):
  """jax.jit((params, batch, key) → ((total, terms), model outputs))."""
  model, loss = _model(method, dtype), _loss_options(method)

  def forward(p, b, key):
    outputs = model.apply({"params": p}, b)
    terms = objectives.compute_losses(outputs, b, loss, key, objectives.mlm_head_fn(model, p))
    if "mlm_hidden" in outputs:  # the full-vocabulary logits, for the references below
      outputs = dict(outputs, mlm_logits=objectives.mlm_head_fn(model, p)(outputs["mlm_hidden"]))
    return terms, outputs

  return jax.jit(forward)


@functools.cache
def _forward(method: str):
  """(total, terms, model outputs) of ``method`` on _batch() with the shared parameters."""
  (total, terms), outputs = _forward_fn(method)(_params(method), _batch(), jax.random.key(7))
  return total, terms, outputs


@functools.cache
def _method_fn(method: str, name: str):
  model = _model(method)
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method=name, mutable=["intermediates"]))


def _call(method: str, name: str, x, params=None):
  out, inter = _method_fn(method, name)(_params(method) if params is None else params, x)
  return jax.tree.map(np.asarray, out), jax.tree.map(np.asarray, inter.get("intermediates", {}))


def _expected_terms(method: str) -> set[str]:
  loss = method_preset(method)["loss"]
  names = {k for k in ("sdm", "asdm", "itc", "id", "mlm", "efa", "triplet", "cmr") if loss[k]}
  if loss["id"] or (loss["cmr"] and loss["cmr_commonality"] == "prob"):
    names |= {"img_acc", "txt_acc"}
  if loss["mlm"]:
    names.add("mlm_acc")
  if method_preset(method)["model"].get("use_parts"):
    names |= {"coarse_cos_img", "coarse_cos_txt"}
  return names


# ------------------------------------------------------------------------------------------------ numpy references
def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _quick_gelu(x):
  return x / (1 + np.exp(-1.702 * x))


def _proj_heads(x, p):
  return np.einsum("...i,ihd->...hd", x, p["kernel"]) + p["bias"]


def _attn_weights(p, xq, xkv):
  q, k = _proj_heads(xq, p["query"]), _proj_heads(xkv, p["key"])
  return _softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]))


def _mha(p, xq, xkv):
  w = _attn_weights(p, xq, xkv)
  o = np.einsum("bhqk,bkhd->bqhd", w, _proj_heads(xkv, p["value"]))
  return np.einsum("bqhd,hdo->bqo", o, p["out"]["kernel"]) + p["out"]["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _ce(logits, labels):
  logits = logits - logits.max(-1, keepdims=True)
  return np.log(np.exp(logits).sum(-1)) - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ config and trees
def test_presets_follow_the_method_reference():
  irra, fmfa, paper = method_preset("irra")["loss"], method_preset("fmfa")["loss"], method_preset("fmfa_paper")["loss"]
  pcc, combined = method_preset("pcc"), method_preset("combined")
  assert (irra["sdm"], irra["id"], irra["mlm"], irra["asdm"], irra["efa"]) == (1, 1, 1, 0, 0)
  assert (fmfa["asdm"], fmfa["id"], fmfa["mlm"], fmfa["efa"], fmfa["sdm"]) == (1, 1, 1, 1, 0)
  assert (fmfa["asdm_alpha"], fmfa["asdm_gap"], fmfa["efa_margin_t2e"], fmfa["efa_margin_i2e"],
          fmfa["efa_lse_temperature"]) == (0.1, "cosine", 0.1, 0.9, 1.0)
  assert (paper["asdm_alpha"], paper["asdm_gap"]) == (10.0, "prob")
  assert (pcc["loss"]["id"], pcc["loss"]["triplet"], pcc["loss"]["cmr"], pcc["loss"]["sdm"]) == (1, 1, 1, 0)
  assert (pcc["loss"]["triplet_margin"], pcc["loss"]["cmr_margin"], pcc["loss"]["cmr_floor"]) == (0.2, 0.2, 0.05)
  assert pcc["model"]["use_parts"] and pcc["model"]["global_pool"] == "max"
  # The lineage's part model (docs/part_model.md): one K/V LayerNorm for both modalities, gradient through the
  # foreground map, signed features under it.
  assert pcc["model"]["part"] == dict(num_queries=6, num_parts=6, encoder_layers=1, decoder_layers=1, heads=8,
                                      foreground=True, kv_norm="shared", foreground_grad="through",
                                      foreground_features="signed")
  cl = combined["loss"]
  assert combined["model"]["use_parts"] and (cl["asdm"], cl["id"], cl["mlm"], cl["efa"], cl["cmr"]) == (1,) * 5


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(name="blip"), "config.model.name"),
    (lambda c: c["loss"].update(sdmm=1.0), "sdmm"),
    (lambda c: c["model"]["part"].update(stripes=3), "config.model.part"),
    (lambda c: c["model"]["clip"].update(dtype="bfloat16"), "config.model.clip.dtype"),
    (lambda c: c["loss"].update(cmr=1.0), "use_parts"),
    (lambda c: c["loss"].update(id=-1.0), ">= 0"),
    (lambda c: c["model"].update(num_classes=0), "num_classes"),
    (lambda c: c["model"].update(global_pool="mean"), "global_pool"),
])
def test_build_model_rejects_bad_config(edit, message):
  cfg = _config("irra")
  edit(cfg)
  with pytest.raises(ValueError, match=message):
    build_model(method_options(cfg))


@pytest.mark.parametrize("method, edit, message", [
    ("pcc", lambda c: c["model"]["part"].update(num_parts=7), "6 grid rows into 7"),  # tiny grid has 6 rows
    ("pcc", lambda c: c["loss"].update(global_loss="sdm"), "global_loss='sdm'"),
    ("combined", lambda c: c["loss"].update(asdm=0.0), "global_loss='sdm'"),
])
def test_build_model_rejects_bad_part_config(method, edit, message):
  cfg = _config(method)
  edit(cfg)
  with pytest.raises(ValueError, match=message):
    build_model(method_options(cfg))


def test_build_model_reads_config_dict_and_fills_preset_defaults():
  cfg = _config("pcc")
  del cfg["model"]["use_parts"], cfg["model"]["global_pool"]
  cfg["loss"] = {"cmr_margin": 0.3}
  m = method_options(ml_collections.ConfigDict(cfg))
  clip, options, loss = m.clip, m.model, m.loss
  assert options.use_parts and options.global_pool == "max" and (loss.id, loss.triplet, loss.cmr) == (1, 1, 1)
  assert loss.cmr_margin == 0.3 and clip.grid == (6, 2) and options.part.num_parts == 3
  assert hash(build_model(method_options(ml_collections.ConfigDict(cfg))))  # frozen options: the module is hashable


def test_param_trees():
  """Each method's params are a sub-tree of "combined"; the backbone sits under "clip" exactly as CLIP's own tree;
  the part model holds one decoder and one coarse query table for both modalities."""
  full = jax.tree.map(lambda x: (x.shape, x.dtype), _all_params())
  expected_top = {"clip": {"clip"}, "irra": {"clip", "classifier", "cross_former", "mlm_head"},
                  "pcc": {"clip", "classifier", "part_model"},
                  "combined": {"clip", "classifier", "cross_former", "mlm_head", "part_model"}}
  expected_top["fmfa"] = expected_top["fmfa_paper"] = expected_top["irra"]
  for method in METHODS:
    tree = jax.eval_shape(lambda b, m=method: _model(m).init(_rngs(), b, train=True), _batch())["params"]
    assert set(tree) == expected_top[method], method
    assert jax.tree.map(lambda x: (x.shape, x.dtype), tree) == {k: full[k] for k in tree}, method
  clip_cfg = _model("irra").clip_config
  clip_tree = jax.eval_shape(lambda: CLIP(clip_cfg).init(jax.random.key(0), _batch()["images"],
                                                         _batch()["caption_ids"]))["params"]
  assert jax.tree.map(lambda x: (x.shape, x.dtype), clip_tree) == full["clip"]
  part = full["part_model"]
  assert set(part) == {"image_pos_embed", "coarse_queries", "part_queries", "image_encoder", "text_encoder", "decoder"}
  assert part["coarse_queries"][0] == (3, 16) and part["part_queries"][0] == (3, 16)
  assert full["classifier"]["kernel"][0] == (16, NUM_CLASSES)


def test_zero_weight_terms_are_not_computed():
  cfg = _config("irra")
  cfg["loss"].update(mlm=0.0, id=0.0)
  model = build_model(method_options(cfg))
  shapes = jax.eval_shape(lambda b: model.init(_rngs(), b, train=True), _batch())["params"]
  assert set(shapes) == {"clip"}
  loss = method_options(cfg).loss
  _, terms = jax.eval_shape(lambda p, b: objectives.model_loss(model, loss, p, b, jax.random.key(0)), shapes,
                            _batch())
  assert set(terms) == {"sdm"}


# ------------------------------------------------------------------------------------------------ forward contract
@pytest.mark.parametrize("method", METHODS)
def test_forward_terms_and_embeddings(method):
  total, terms, _ = _forward(method)
  assert set(terms) == _expected_terms(method)
  for name, value in terms.items():
    assert value.shape == () and value.dtype == jnp.float32, name
    assert np.isfinite(value), name
    if name.endswith("_acc"):
      assert 0 <= value <= 1, name
    elif name.startswith("coarse_cos_"):  # logged, not a loss term
      assert -1 <= value <= 1, name
    else:
      assert value != 0, name
  loss = _config(method)["loss"]
  want = sum(loss[k] * np.float64(terms[k]) for k in terms if k in objectives.LOSS_NAMES)
  assert total.dtype == jnp.float32 and np.isclose(total, want, rtol=1e-5)

  model, o = _model(method), _model(method).options
  dim = 16 * (1 + o.part.num_queries + o.part.num_parts if o.use_parts else 1)
  for name, x in (("encode_images", _batch()["images"]), ("encode_texts", _batch()["caption_ids"])):
    e = jax.eval_shape(lambda p, x, name=name: model.apply({"params": p}, x, method=name), _params(method), x)
    assert e.shape == (B, dim) and e.dtype == jnp.float32  # values: test_encode_* below


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_losses_and_embeddings():
  model = _model("combined", "bfloat16")
  shapes = jax.eval_shape(lambda b: model.init(_rngs(), b, train=True), _batch())["params"]
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  (total, terms), _ = _forward_fn("combined", "bfloat16")(_params("combined"), _batch(), jax.random.key(7))
  assert set(terms) == _expected_terms("combined") and total.dtype == jnp.float32 and np.isfinite(total)
  assert all(v.dtype == jnp.float32 and np.isfinite(v) for v in terms.values())
  ref_total, _, _ = _forward("combined")
  np.testing.assert_allclose(total, ref_total, rtol=0.1)  # bf16 rounding only
  e = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode_images"), shapes, _batch()["images"])
  assert e.dtype == jnp.float32


# ------------------------------------------------------------------------------------------------ wiring vs numpy
@pytest.mark.parametrize("method", ["clip", "irra"])
def test_encode_equals_cosine_of_clip_pooled_features(method):
  batch, params = _batch(), _params(method)
  clip = CLIP(_model(method).clip_config)
  encode_image = jax.jit(lambda p, x: clip.apply({"params": p}, x, method="encode_image"))
  encode_text = jax.jit(lambda p, x: clip.apply({"params": p}, x, method="encode_text"))
  _, pooled_v = encode_image(params["clip"], batch["images"])
  _, pooled_t = encode_text(params["clip"], batch["caption_ids"])
  want = _unit(np.asarray(pooled_v, np.float64)) @ _unit(np.asarray(pooled_t, np.float64)).T
  images, _ = _call(method, "encode_images", batch["images"])
  texts, _ = _call(method, "encode_texts", batch["caption_ids"])
  np.testing.assert_allclose(images @ texts.T, want, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)


def test_part_embeddings_global_pooling_and_weighted_retrieval_cosine():
  """pcc: global = max over patch tokens / valid text tokens of the CLIP outputs; the retrieval dot product equals
  the embed_weights-weighted mean of per-piece cosines."""
  batch = _batch()
  img, _ = _call("pcc", "image_embeddings", batch["images"])
  txt, _ = _call("pcc", "text_embeddings", batch["caption_ids"])
  np.testing.assert_allclose(img["global"], img["tokens"][:, 1:].max(1), rtol=1e-6)
  valid = batch["caption_ids"] != 0
  want_t = np.stack([txt["tokens"][b][valid[b]].max(0) for b in range(B)])
  np.testing.assert_allclose(txt["global"], want_t, rtol=1e-6)

  def pieces(e):
    return np.concatenate([e["global"][:, None], e["coarse"], e["part"]], 1).astype(np.float64)

  pv, pt = _unit(pieces(img)), _unit(pieces(txt))  # [B, M, E]
  w = np.array([EMBED_WEIGHTS["global_"]] + [EMBED_WEIGHTS["coarse"]] * 3 + [EMBED_WEIGHTS["part"]] * 3)
  want = np.einsum("imd,jmd,m->ij", pv, pt, w) / w.sum()
  images, _ = _call("pcc", "encode_images", batch["images"])
  texts, _ = _call("pcc", "encode_texts", batch["caption_ids"])
  np.testing.assert_allclose(images @ texts.T, want, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)


def test_id_term_is_mean_over_all_embedding_pieces():
  batch = _batch()
  img, _ = _call("pcc", "image_embeddings", batch["images"])
  txt, _ = _call("pcc", "text_embeddings", batch["caption_ids"])
  cls = _np(_params("pcc")["classifier"])
  ce = []
  for e in (img, txt):
    pieces = np.concatenate([e["global"][:, None], e["coarse"], e["part"]], 1).astype(np.float64)  # [B, 7, E]
    ce.append(_ce(_dense(pieces, cls), np.broadcast_to(PIDS[:, None], pieces.shape[:2])).mean())
  _, terms, _ = _forward("pcc")
  np.testing.assert_allclose(terms["id"], 0.5 * (ce[0] + ce[1]), rtol=1e-5)
  acc = np.mean(np.argmax(_dense(img["global"].astype(np.float64), cls), -1) == PIDS)
  np.testing.assert_allclose(terms["img_acc"], acc)


def test_mlm_term_uses_masked_ids_and_labelled_positions_only():
  batch = _batch()
  _, terms, inter = _forward("irra")
  logits = np.asarray(inter["mlm_logits"], np.float64)  # [B, 77, VOCAB]
  labels = batch["mlm_labels"]
  on = labels != 0
  np.testing.assert_allclose(terms["mlm"], _ce(logits, labels)[on].mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["mlm_acc"], np.mean(np.argmax(logits, -1)[on] == labels[on]), atol=1e-6)
  # the MLM branch reads mlm_ids, the global losses read caption_ids
  fwd, params = _forward_fn("irra"), _params("irra")
  other = dict(batch, caption_ids=np.where(batch["caption_ids"] > 0, 1 + batch["caption_ids"] % 7,
                                           0).astype(np.int32))
  other["caption_ids"][np.arange(B), np.argmax(batch["caption_ids"], 1)] = EOT
  (_, t2), _ = fwd(params, other, jax.random.key(7))
  assert t2["mlm"] == terms["mlm"] and t2["sdm"] != terms["sdm"]
  other = dict(batch, mlm_ids=np.where(batch["mlm_labels"] > 0, 5, batch["mlm_ids"]).astype(np.int32))
  (_, t3), _ = fwd(params, other, jax.random.key(7))
  assert t3["mlm"] != terms["mlm"] and t3["sdm"] == terms["sdm"]


def test_cross_former_and_mlm_head_match_numpy():
  """LN_t/LN_i → cross-attention without residual → bidirectional pre-LN blocks → ln_post → head, in float64."""
  width, layers, heads, vocab = 16, 2, 4, 50
  r = np.random.default_rng(3)
  text = r.standard_normal((2, 9, width)).astype(np.float32)
  image = r.standard_normal((2, 5, width)).astype(np.float32)
  former, head = CrossFormer(width, layers, heads), MLMHead(width, vocab, layers)
  pf = jax.jit(former.init)(jax.random.key(0), text, image)["params"]
  ph = jax.jit(head.init)(jax.random.key(1), text)["params"]
  noise = np.random.default_rng(4)
  pf = jax.tree.map(lambda x: x + 0.05 * noise.standard_normal(x.shape).astype(np.float32), pf)  # non-trivial LN/bias
  got = jax.jit(lambda a, b: head.apply({"params": ph}, former.apply({"params": pf}, a, b)))(text, image)

  p, q = _np(pf), _np(ph)
  x = _mha(p["cross_attn"], _ln(text.astype(np.float64), p["ln_pre_t"]), _ln(image.astype(np.float64), p["ln_pre_i"]))
  for i in range(layers):
    blk = p["transformer"][f"resblocks_{i}"]
    y = _ln(x, blk["ln_1"])
    x = x + _mha(blk["attn"], y, y)
    y = _ln(x, blk["ln_2"])
    x = x + _dense(_quick_gelu(_dense(y, blk["mlp"]["c_fc"])), blk["mlp"]["c_proj"])
  x = _ln(x, p["ln_post"])
  want = _dense(_ln(_quick_gelu(_dense(x, q["dense"])), q["ln"]), q["fc"])
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("method", ["irra", "combined"])
def test_train_forward_encodes_captions_and_masked_copies_like_separate_text_passes(method):
  """The training forward runs captions and MLM copies through the text tower together; each half must equal the
  tower on its own ids alone, and the MLM hidden states the cross-former on the separately encoded copies."""
  batch, params, model = _batch(), _params(method), _model(method)
  clip = CLIP(model.clip_config)
  text = jax.jit(lambda p, x: clip.apply({"params": p}, x, method="encode_text"))
  tokens, pooled = text(params["clip"], batch["caption_ids"])
  mlm_tokens, _ = text(params["clip"], batch["mlm_ids"])
  image_tokens, _ = jax.jit(lambda p, x: clip.apply({"params": p}, x, method="encode_image"))(params["clip"],
                                                                                              batch["images"])
  former = CrossFormer(model.clip_config.embed_dim, model.options.cross_layers, model.options.cross_heads)
  want_hidden = jax.jit(former.apply)({"params": params["cross_former"]}, mlm_tokens, image_tokens)
  _, _, outputs = _forward(method)
  np.testing.assert_allclose(outputs["text"]["tokens"], tokens, atol=1e-5)
  if model.options.global_pool == "token":
    np.testing.assert_allclose(outputs["text"]["global"], pooled, atol=1e-5)
  np.testing.assert_allclose(outputs["mlm_hidden"], want_hidden, atol=1e-5)
  assert not np.allclose(tokens, mlm_tokens, atol=1e-3)  # the two halves are distinct inputs


def test_cross_former_init_follows_irra():
  """IRRA model/build.py re-initialises weights only; biases keep PyTorch's defaults: nn.MultiheadAttention zeroes
  in_proj_bias and out_proj.bias, nn.Linear draws uniform(±1/√fan_in) (docs/methods.md §2.3, IRRA @cfc2378)."""
  width, layers = 64, 4
  x = jnp.zeros((1, 3, width))
  pf = jax.jit(CrossFormer(width, layers, 8).init)(jax.random.key(0), x, x)["params"]
  ph = jax.jit(MLMHead(width, 500, layers).init)(jax.random.key(1), x)["params"]
  scale, proj, fc = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
  want = {("cross_attn", "query"): (scale, None), ("cross_attn", "value"): (scale, None),
          ("cross_attn", "out"): (proj, None)}
  for i in range(layers):
    blk = ("transformer", f"resblocks_{i}")
    want |= {blk + ("attn", "key"): (scale, None), blk + ("attn", "out"): (proj, None),
             blk + ("mlp", "c_fc"): (fc, width), blk + ("mlp", "c_proj"): (proj, 4 * width)}
  heads = {("dense",): (fc, width), ("fc",): (proj, width)}

  def check(tree, path, std, fan_in):
    node = tree
    for k in path:
      node = node[k]
    np.testing.assert_allclose(np.std(np.asarray(node["kernel"])), std, rtol=0.06, err_msg=str(path))
    bias = np.asarray(node["bias"])
    if fan_in is None:  # attention: zero
      assert not np.any(bias), path
      return
    bound = fan_in ** -0.5  # uniform(−bound, bound): |b| ≤ bound, max near it, std = bound/√3
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.8 * bound, path
    np.testing.assert_allclose(np.std(bias), bound / np.sqrt(3), rtol=0.2, err_msg=str(path))
    assert abs(np.mean(bias)) < 0.25 * bound, path

  for path, (std, fan_in) in want.items():
    check(pf, path, std, fan_in)
  for path, (std, fan_in) in heads.items():
    check(ph, path, std, fan_in)
  for ln in ("ln_pre_t", "ln_pre_i", "ln_post"):
    assert np.all(np.asarray(pf[ln]["scale"]) == 1) and not np.any(np.asarray(pf[ln]["bias"]))
  cls = np.asarray(_all_params()["classifier"]["kernel"])
  assert 0.0006 < np.std(cls) < 0.0014 and not np.any(np.asarray(_all_params()["classifier"]["bias"]))


# ------------------------------------------------------------------------------------------------ part model
def test_stripe_bounds_partition_every_row_once():
  for rows in range(1, 30):
    for parts in range(1, rows + 1):
      bounds = stripe_bounds(rows, parts)
      member = np.zeros((parts, rows), int)
      for i, (a, b) in enumerate(bounds):
        member[i, a:b] = 1
      assert len(bounds) == parts and np.all(member.sum(0) == 1), (rows, parts)  # each row in exactly one stripe
      heights = member.sum(1)
      assert heights.min() >= 1 and heights.max() - heights.min() <= 1, (rows, parts)
      assert [a for a, _ in bounds] == sorted(a for a, _ in bounds)  # top to bottom
      if rows % parts == 0:
        np.testing.assert_array_equal(heights, rows // parts)
  for rows, parts in [(6, 0), (6, 7)]:
    with pytest.raises(ValueError, match="stripes"):
      stripe_bounds(rows, parts)


def test_foreground_map_and_image_parts_match_numpy():
  """Map = cross-attention softmax over the N patches, averaged over heads/queries (one decoder layer), × N (sums to
  N, mean 1); parts = per-stripe max of map ⊙ M_v over the 6×2 grid (3 stripes of 2 rows)."""
  img, inter = _call("pcc", "image_embeddings", _batch()["images"])
  memory = np.asarray(inter["part_model"]["image_memory"][0], np.float64)  # [B, 12, 16]
  p = _np(_params("pcc")["part_model"])
  layer = p["decoder"]["layers_0"]
  queries = np.broadcast_to(p["coarse_queries"], (B,) + p["coarse_queries"].shape)
  w = _attn_weights(layer["cross_attn"], _ln(queries, layer["ln_q"]), _ln(memory, layer["ln_kv"]))  # [B, H, Q, N]
  want_fg = w.mean(axis=(1, 2)) * memory.shape[1]
  np.testing.assert_allclose(img["foreground"], want_fg, rtol=1e-4)
  np.testing.assert_allclose(img["foreground"].sum(1), memory.shape[1], rtol=1e-5)
  assert np.ptp(img["foreground"]) > 1e-3  # not the trivial uniform map
  grid = (want_fg[..., None] * memory).reshape(B, 6, 2, 16)
  want_parts = np.stack([s.max(axis=(1, 2)) for s in np.split(grid, 3, axis=1)], axis=1)
  np.testing.assert_allclose(img["part"], want_parts, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(foreground_map(jnp.asarray(w[None])), want_fg, rtol=1e-6)


def test_grouped_decoding_equals_separate_decoding():
  decoder = Decoder(16, 2, 4)
  r = np.random.default_rng(6)
  queries, memory = r.standard_normal((5, 16)).astype(np.float32), r.standard_normal((2, 7, 16)).astype(np.float32)
  valid = np.array([[True] * 7, [True] * 4 + [False] * 3])

  def run(q):
    params = decoder.init(jax.random.key(0), q, memory, valid)
    apply = lambda x, g=None: decoder.apply(params, x, memory, valid, groups=g)[0]  # noqa: E731
    return apply(q, (3, 2)), apply(q[:3]), apply(q[3:]), apply(q)

  joint, first, second, ungrouped = jax.jit(run)(queries)
  np.testing.assert_allclose(joint[:, :3], first, atol=1e-5)
  np.testing.assert_allclose(joint[:, 3:], second, atol=1e-5)
  assert np.max(np.abs(joint - ungrouped)) > 1e-3  # the grouping does change the result


def test_decoder_and_queries_are_shared_by_both_modalities():
  batch, params = _batch(), _params("pcc")

  def embed(p):
    return (_call("pcc", "image_embeddings", batch["images"], p)[0],
            _call("pcc", "text_embeddings", batch["caption_ids"], p)[0])

  def perturbed(key):
    part = dict(params["part_model"])
    part[key] = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(5), x.shape), part[key])
    return dict(params, part_model=part)

  img0, txt0 = embed(params)
  changed = lambda a, b: np.max(np.abs(a - b)) > 1e-4  # noqa: E731
  for key in ("decoder", "coarse_queries"):
    img1, txt1 = embed(perturbed(key))
    assert changed(img1["coarse"], img0["coarse"]) and changed(txt1["coarse"], txt0["coarse"]), key
  img1, txt1 = embed(perturbed("part_queries"))
  assert changed(txt1["part"], txt0["part"])
  # text part tokens share the decoder pass but not the self-attention of the coarse tokens
  np.testing.assert_array_equal(txt1["coarse"], txt0["coarse"])
  np.testing.assert_array_equal(img1["coarse"], img0["coarse"])


# ------------------------------------------------------------------------------------------------ sharded training
@pytest.mark.slow
@pytest.mark.parametrize("method", ["clip", "irra", "fmfa", "pcc", "combined"])
def test_sharded_train_step_matches_single_device(method):
  """value_and_grad + Adam under jit with the batch sharded over 8 devices; same loss as one device; every
  parameter leaf gets a non-zero finite gradient (no parameter is frozen in any method)."""
  assert jax.device_count() == 8
  model, loss_opts, tx = _model(method), _loss_options(method), optax.adam(1e-3)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def step(params, opt_state, batch, key):
    (total, terms), grads = jax.value_and_grad(
        lambda p: objectives.model_loss(model, loss_opts, p, batch, key), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total, terms, jax.tree.map(lambda g: jnp.max(jnp.abs(g)),
                                                                                      grads)

  params = jax.device_put(_params(method), rep)
  batch = jax.device_put(_batch(), data)
  new, _, loss, terms, gmax = jax.jit(step)(params, jax.device_put(tx.init(params), rep), batch,
                                            jax.random.key(7))
  assert batch["images"].sharding.spec == P("data")
  total, ref_terms, _ = _forward(method)
  np.testing.assert_allclose(loss, total, rtol=2e-5)
  for k in ref_terms:
    np.testing.assert_allclose(terms[k], ref_terms[k], rtol=2e-5, atol=1e-6, err_msg=k)
  bad = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(gmax)
         if not (np.isfinite(g) and g > 0)]
  assert not bad, f"parameters without gradient: {bad}"
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new, _params(method))
  assert all(jax.tree.leaves(moved))
