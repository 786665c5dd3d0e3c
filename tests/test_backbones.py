"""Park et al.'s published backbones: BERT, ImageNet ViT and ResNet-50 parity with transformers (fixtures from
tools/make_backbone_fixtures.py), bad checkpoints, conversion, the pcc_paper_* presets end to end."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dataset_fixtures
from tpsearch_jax import batch as batch_lib
from tpsearch_jax import objectives
from tpsearch_jax.bench import flops
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.models import backbones, build_model, method_options
from tpsearch_jax.models import convert_weights as convert_cli
from tpsearch_jax.models.bert import bert_tokenizer
from tpsearch_jax.models.bert.weights import load_bert
from tpsearch_jax.models.clip import CheckpointError
from tpsearch_jax.models.resnet import ResNet, ResNetConfig
from tpsearch_jax.models.resnet.weights import load_resnet50
from tpsearch_jax.models.vit.weights import load_vit
from tpsearch_jax.training import config_checks, optim, trainer
from tpsearch_jax.training import setup as setup_lib
from tpsearch_jax.training.options import run_options

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
BERT, VIT, RESNET = (FIXTURES / f"hf_tiny_{n}" for n in ("bert", "vit", "resnet"))
CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
ATOL = 1e-5


def _ref(folder):
  with np.load(folder / "outputs.npz") as f:
    return {k: f[k] for k in f.files}


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), b, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------ parity


def test_bert_matches_transformers_and_tokenizes_like_it():
  ref = _ref(BERT)
  model, params = load_bert(BERT)
  assert (model.config.hidden_size, model.config.num_layers, model.config.intermediate_size) == (32, 2, 48)
  hidden, pooled = jax.jit(model.apply)({"params": params}, ref["input_ids"], ref["attention_mask"],
                                        ref["token_type_ids"])
  _close(hidden, ref["last_hidden_state"])
  _close(pooled, ref["pooler_output"])
  tok = bert_tokenizer(str(BERT))
  np.testing.assert_array_equal(tok.tokenize(list(ref["sentences"]), 12), ref["input_ids"])  # lower-cased, [SEP] kept


def test_vit_matches_transformers_native_and_resampled():
  ref = _ref(VIT)
  model, params = load_vit(VIT)
  assert model.image_size == (32, 32)
  _close(jax.jit(model.apply)({"params": params}, ref["images"]), ref["last_hidden_state"])
  model, params = load_vit(VIT, image_size=(48, 16))  # 4×4 grid → 6×2, bilinear as for CLIP
  assert params["embeddings"]["position_embeddings"].shape == (13, 32)
  _close(jax.jit(model.apply)({"params": params}, ref["images_48x16"]), ref["last_hidden_state_48x16"])


def test_resnet_matches_transformers_with_both_last_strides():
  ref = _ref(RESNET)
  model, variables = load_resnet50(RESNET)
  assert set(variables) == {"params", "batch_stats"}
  _close(jax.jit(model.apply)(variables, ref["images"]), ref["last_hidden_state"])
  model, variables = load_resnet50(RESNET, image_size=(64, 32), last_stride=1)
  out = jax.jit(model.apply)(variables, ref["images"])
  assert out.shape == (2, 8, 4, 32)
  _close(out, ref["last_hidden_state_stride1"])
  # ResNet-50 with last stride 1 gives the part model's 24×8 map at 384×128.
  shape = jax.eval_shape(lambda: ResNet(ResNetConfig(last_stride=1)).init_with_output(
      jax.random.key(0), jnp.zeros((1, 384, 128, 3)))[0]).shape
  assert shape == (1, 24, 8, 2048)


# ------------------------------------------------------------------------------------------------ bad checkpoints


def _copy(tmp_path, src, edit=None, config_edit=None):
  folder = tmp_path / src.name
  shutil.copytree(src, folder)
  state = load_file(folder / "model.safetensors")
  if edit:
    edit(state)
  save_file(state, folder / "model.safetensors")
  if config_edit:
    cfg = json.loads((folder / "config.json").read_text())
    config_edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
  return folder


@pytest.mark.parametrize("loader,src,key", [
    (load_bert, BERT, "encoder.layer.1.attention.output.LayerNorm.bias"),
    (load_vit, VIT, "encoder.layer.0.intermediate.dense.weight"),
    (load_resnet50, RESNET, "encoder.stages.1.layers.1.layer.2.normalization.running_var"),
])
def test_missing_extra_and_misshaped_tensors_are_all_named(tmp_path, loader, src, key):
  def edit(s):
    s["extra.weight"] = np.zeros(3, np.float32)
    s.pop(key)
    shaped = sorted(k for k in s if k.endswith("weight") and s[k].ndim >= 2 and k != key)[0]
    s[shaped] = s[shaped][:, :-1].copy()

  folder = _copy(tmp_path, src, edit)
  with pytest.raises(CheckpointError) as e:
    loader(folder)
  msg = str(e.value)
  assert str(folder / "model.safetensors") in msg
  assert f"missing tensors: '{key}'" in msg and "unexpected tensors: 'extra.weight'" in msg
  assert "wrong shapes: '" in msg


@pytest.mark.parametrize("loader,src", [(load_bert, BERT), (load_vit, VIT),
                                        (load_resnet50, RESNET)])
def test_wrong_model_type_and_missing_files(tmp_path, loader, src):
  folder = _copy(tmp_path, src, config_edit=lambda c: c.update(model_type="clip"))
  with pytest.raises(CheckpointError, match="model_type is 'clip', expected"):
    loader(folder)
  other = VIT if src == BERT else BERT  # a real checkpoint of another kind
  with pytest.raises(CheckpointError, match=f"model_type is '{other.name[8:]}', expected"):
    loader(other)
  os.remove(folder / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    loader(folder)
  with pytest.raises(FileNotFoundError, match="not found"):
    loader(tmp_path / "nowhere")


def test_pretraining_checkpoint_layout_loads_the_same(tmp_path):
  """bert-base-uncased ships BertForPreTraining weights: a "bert." prefix, LayerNorm gamma/beta, cls.* heads."""
  def edit(s):
    for k in list(s):
      new = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
      s[new] = s.pop(k)
    s["cls.predictions.bias"] = np.zeros(4, np.float32)

  _, want = load_bert(BERT)
  _, got = load_bert(_copy(tmp_path, BERT, edit))
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_convert_cli_detects_the_kind_and_round_trips(tmp_path):
  for src, extra in ((BERT, []), (VIT, ["--image_size=48,16"]), (RESNET, [])):
    dst = tmp_path / f"{src.name}.msgpack"
    assert convert_cli.main([f"--src={src}", f"--dst={dst}", *extra]) == 0
  _, a = load_bert(tmp_path / "hf_tiny_bert.msgpack")
  jax.tree.map(np.testing.assert_array_equal, a, load_bert(BERT)[1])
  model, v = load_vit(tmp_path / "hf_tiny_vit.msgpack")
  assert model.image_size == (48, 16)
  _close(model.apply({"params": v}, _ref(VIT)["images_48x16"]), _ref(VIT)["last_hidden_state_48x16"])
  with pytest.raises(CheckpointError, match="converted for images"):
    load_vit(tmp_path / "hf_tiny_vit.msgpack", image_size=(32, 32))
  model, v = load_resnet50(tmp_path / "hf_tiny_resnet.msgpack", last_stride=1)
  _close(model.apply(v, _ref(RESNET)["images"]), _ref(RESNET)["last_hidden_state_stride1"])
  with pytest.raises(CheckpointError, match="converted as 'bert', not 'vit'"):
    load_vit(tmp_path / "hf_tiny_bert.msgpack")


# ------------------------------------------------------------------------------------------------ presets


def _config(dataset: str, method: str, root: str | None = None):
  """The dataset config of ``method`` with the fixture towers' sizes, 64×32 images, 16 word pieces, 4 parts."""
  c = load_config_module(str(CONFIGS / f"{dataset}.py")).get_config(method)
  c.model.bert.update(dict(vocab_size=len((BERT / "vocab.txt").read_text().splitlines()), hidden_size=32, num_layers=2,
                           num_heads=4, intermediate_size=48, max_position_embeddings=40))
  c.model.vit.update(dict(patch_size=8, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=40))
  c.model.resnet.update(dict(embedding_size=8, hidden_sizes=(16, 24, 32), depths=(1, 2, 1)))
  c.model.embed_dim = 16
  c.model.part.update(dict(num_queries=2, num_parts=4, heads=4))
  c.model.dtype = "float32"
  c.data.image_size, c.data.context_length = (64, 32), 16
  c.train.batch_size, c.eval.batch_size, c.train.log_every_steps = 8, 8, 1
  c.schedule.num_epochs, c.schedule.milestones = 2, (1,)
  if root:
    c.data.root = root
  return c


@pytest.mark.parametrize("method", ["pcc_paper_vit", "pcc_paper_rn50"])
def test_presets_carry_the_lineage_recipe_on_every_dataset(method):
  for dataset in ("cuhk", "icfg", "rstp"):
    c = load_config_module(str(CONFIGS / f"{dataset}.py")).get_config(method)
    o, s = c.optim, c.schedule
    assert (o.name, o.b1, o.b2, o.eps, o.lr, o.weight_decay) == ("adam", 0.9, 0.999, 1e-8, 1e-3, 0.0)
    assert (s.name, tuple(s.milestones), s.gamma, s.warmup_epochs, s.num_epochs) == ("step", (20, 40, 50), 0.1, 0, 60)
    assert c.train.batch_size == 64 and c.data.tokenizer == "bert" and c.data.context_length == 100
    group = lambda path: optim.param_group(tuple(path.split("/")), o)  # noqa: E731
    assert group("text_backbone/encoder/layer_0/output/dense/kernel") == (0.0, 0.0)  # BERT frozen (LGUR)
    assert o.lr * group("image_backbone/encoder/resblocks_0/mlp/c_fc/kernel")[0] == pytest.approx(1e-4)
    assert o.lr * group("part_model/decoder/ln_post/scale")[0] == pytest.approx(1e-4)
    assert group("image_proj/kernel")[0] == group("classifier/kernel")[0] == 1.0
    assert group("image_backbone/embedder/embedder/normalization/mean") == (0.0, 0.0)
  c.model.num_classes = 7
  m = method_options(c)
  clip, options, loss = m.clip, m.model, m.loss
  assert options.global_pool == "max" and options.use_parts and (loss.id, loss.triplet, loss.cmr) == (1, 1, 1)
  assert backbones.image_grid(clip, options) == (24, 8)
  factors = [float(optim.lr_factor(e, 60, 0, 0.1, "step", milestones=(20, 40, 50))) for e in (0, 19, 20, 40, 59)]
  assert factors == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.001])


def test_flops_of_the_paper_backbones_match_xla():
  """configs/synthetic.py towers (width 128, 96×32 images): XLA's count (matmuls + element-wise) ≥ the analytic one
  (matmuls and convolutions only) and within the element-wise share (≈1.5 % at the full ViT-B / BERT-base sizes)."""
  for method in ("pcc_paper_vit", "pcc_paper_rn50"):
    c = load_config_module(str(CONFIGS / "synthetic.py")).get_config(method)
    c.model.num_classes = 11
    options = run_options(c)
    model, lo = build_model(options), options.loss
    b = {k: jnp.asarray(v) for k, v in batch_lib.fake_train_batch(options.batch_options, 2).items()}
    params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, b))["params"]
    fwd = jax.jit(lambda p: objectives.model_loss(model, lo, p, b, jax.random.key(0))[0]).lower(params)
    ratio = float(fwd.cost_analysis()["flops"]) / flops.train_step_flops(options, 2).forward_total
    assert 1.0 <= ratio < 1.1, (method, ratio)  # exact GELU (erf) and BatchNorm weigh ~6 % at width 128


def test_frozen_statistics_are_enforced():
  c = _config("cuhk", "pcc_paper_rn50")
  c.optim.param_groups = optim.IRRA_GROUPS
  with pytest.raises(ValueError, match="frozen ResNet BatchNorm statistics"):
    config_checks.resolve_config(c)
  c = _config("cuhk", "pcc_paper_rn50")
  c.data.tokenizer = "clip"
  with pytest.raises(ValueError, match="tokenizer='clip' does not fit"):
    config_checks.resolve_config(c)


def _converted_on_cuhk(tmp_path, method):
  """CUHK-PEDES-format fixture, towers initialised from the tiny HF checkpoints (the real-benchmark path)."""
  c = _config("cuhk", method, dataset_fixtures.write_cuhk(str(tmp_path / "data")))
  c.init.bert = str(BERT)
  if method == "pcc_paper_vit":
    c.init.vit = str(VIT)  # 32×32 checkpoint, 64×32 inputs: position grid 4×4 → 8×4
  else:
    c.init.resnet = str(RESNET)
  s = config_checks.resolve_config(c, num_classes=3)
  assert s.data.tokenizer_path == str(BERT)  # the BERT folder's vocab.txt
  assert set(setup_lib.pretrained_backbone_params(s.init, run_options(s))) == {"text_backbone", "image_backbone"}
  return c


def _scratch_on_synthetic(tmp_path, method):
  """synthetic_pedes (a few identities) from random init with configs/synthetic.py's recipe, smaller towers."""
  c = load_config_module(str(CONFIGS / "synthetic.py")).get_config(method)
  c.data.root = str(tmp_path / "synthetic")
  c.data.synthetic = dict(num_ids=6, images_per_id=2, seed=0, image_size=(64, 32))
  c.data.image_size, c.data.context_length = (32, 16), 24
  c.model.bert.update(dict(hidden_size=32, num_layers=1, intermediate_size=64, max_position_embeddings=32))
  c.model.vit.update(dict(hidden_size=32, num_layers=1, mlp_dim=64))
  c.model.resnet.update(dict(embedding_size=8, hidden_sizes=(16, 32), depths=(1, 1)))
  c.model.embed_dim = 16
  c.model.part.update(dict(num_queries=1, num_parts=2))
  c.train.batch_size, c.eval.batch_size, c.train.log_every_steps = 8, 8, 1
  return c


# Each run compiles its own train step (~1 min of CPU on 2 cores): the suite trains each preset once, on the other
# dataset each; TPSEARCH_ALL_BACKBONE_RUNS=1 adds the two remaining combinations.
_ALL = pytest.mark.skipif(not os.environ.get("TPSEARCH_ALL_BACKBONE_RUNS"), reason="set TPSEARCH_ALL_BACKBONE_RUNS=1")


@pytest.mark.slow
@pytest.mark.parametrize("method,make", [
    ("pcc_paper_vit", _scratch_on_synthetic), ("pcc_paper_rn50", _converted_on_cuhk),
    pytest.param("pcc_paper_vit", _converted_on_cuhk, marks=_ALL),
    pytest.param("pcc_paper_rn50", _scratch_on_synthetic, marks=_ALL)])
def test_preset_trains_and_evaluates(tmp_path, caplog, method, make):
  """One epoch of the preset, on one of the session's devices (the trainer's ``devices``)."""
  c = make(tmp_path, method)
  c.schedule.num_epochs, c.schedule.milestones, c.eval.every_epochs = 1, (1,), 1
  with caplog.at_level("INFO"):
    result = trainer.train_and_evaluate(c, str(tmp_path / "run"), devices=jax.devices()[-1:])
  assert "Mesh {'data': 1, 'fsdp': 1} over 1 devices" in caplog.text
  assert result["splits"]["test"]["num_queries"] > 0
  assert all(0 <= row["R1"] <= 100 for row in result["splits"].values())
