"""Config files: command-line overrides, the reference recipe defaults, every method builds, clear early failures."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags, logging
from ml_collections import config_flags

from tpsearch_jax import sharding as shd
from tpsearch_jax import batch as batch_lib
from tpsearch_jax.training import config_checks, optim, trainer
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.data import annotations
from tpsearch_jax.models import METHODS, build_model, method_options
from tpsearch_jax.training.options import run_options

CONFIG_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs"))


def load(dataset: str, method: str = "irra"):
  return load_config_module(os.path.join(CONFIG_DIR, f"{dataset}.py")).get_config(method)


def parse(argv):
  """Parses ``argv`` with a fresh flag set, as ``python -m tpsearch_jax.main`` does."""
  fv = flags.FlagValues()
  argv = ["prog"] + argv
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def test_command_line_overrides():
  c = parse([f"--config={CONFIG_DIR}/cuhk.py:fmfa", "--config.optim.lr=5e-6", "--config.data.image_size=(96,32)",
             "--config.eval.select_on=test", "--config.train.batch_size=128", "--config.loss.efa_margin_i2e=0.8",
             "--config.init.clip=/weights/clip-vit-base-patch16"])
  assert c.model.name == "fmfa" and c.loss.asdm == 1.0 and c.loss.efa == 1.0
  assert c.optim.lr == 5e-6 and c.train.batch_size == 128 and c.loss.efa_margin_i2e == 0.8
  assert tuple(c.data.image_size) == (96, 32)
  assert tuple(c.model.clip.image_size) == (96, 32)  # one value, shared by the data and the model
  assert c.eval.select_on == "test" and c.init.clip == "/weights/clip-vit-base-patch16"
  with pytest.raises(Exception, match="nonexistent"):
    parse([f"--config={CONFIG_DIR}/cuhk.py", "--config.optim.nonexistent=1"])


def test_icfg_override_of_the_unset_selection():
  c = parse([f"--config={CONFIG_DIR}/icfg.py:irra", "--config.eval.select_on=none"])
  assert c.eval.select_on == "none" and tuple(c.eval.splits) == ("test",)


def test_defaults_are_the_reference_recipe():
  """docs/methods.md §4: Adam(0.9, 0.999, eps 1e-3), lr 1e-5, IRRA's groups (×5, bias ×2 wd 0), wd 4e-5 (L2), 5 warm-up
  epochs from 0.1× then cosine stepped per epoch, 60 epochs, batch 64; val selection; 384×128 ViT-B/16. The
  per-method recipes are checked in test_recipes.py."""
  for dataset in ("cuhk", "rstp", "icfg"):
    c = load(dataset)
    o, s = c.optim, c.schedule
    assert (o.name, o.b1, o.b2, o.eps, o.lr, o.lr_factor, o.bias_lr_factor) == ("adam", 0.9, 0.999, 1e-3, 1e-5, 5, 2)
    assert (o.weight_decay, o.weight_decay_bias) == (4e-5, 0.0)
    assert tuple(map(tuple, o.param_groups)) == optim.IRRA_GROUPS  # checked against §4 in test_recipes
    assert c.data.drop_last  # ⌊N/B⌋ by default; the reference's ⌈N/B⌉ is data.drop_last=False
    assert (s.name, s.num_epochs, s.warmup_epochs, s.warmup_factor, s.per_step) == ("cosine", 60, 5, 0.1, False)
    assert c.train.batch_size == 64 and c.seed == 1
    assert tuple(c.data.image_size) == (384, 128) and c.model.clip.patch_size == 16
    assert c.data.caption_uses_mlm_ids  # the reference's masked-caption aliasing (docs/methods.md §5.1)
    assert c.init.clip is None and c.model.dtype == "auto"
  assert load("cuhk").eval.select_on == "val" and load("rstp").eval.select_on == "val"
  assert load("icfg").eval.select_on is None


@pytest.mark.parametrize("dataset,methods", [("synthetic", METHODS + ("demo",)), ("cuhk", ("irra",)),
                                             ("icfg", ("fmfa",)), ("rstp", ("pcc",))])
def test_methods_build_from_the_dataset_configs(dataset, methods):
  """Every method's config (and synthetic.py's ``demo``) is accepted by the model and traces (shapes only)."""
  for method in methods:
    c = load(dataset, method)
    if c.eval.select_on is None:
      c.eval.select_on = "none"
    c = config_checks.resolve_config(c, num_classes=7)
    options = run_options(c)
    model = build_model(options)
    b = {n: jnp.asarray(v) for n, v in batch_lib.fake_train_batch(options.batch_options, 2).items()}
    params = jax.eval_shape(lambda k: model.init({"params": k, "mining": k, "dropout": k}, b)["params"],
                            jax.random.PRNGKey(0))
    (h, w), p = c.data.image_size, c.model.clip.patch_size
    if c.model.backbone != "clip":  # pcc_paper_*: BERT + ViT / ResNet (tests/test_backbones.py)
      assert {"image_backbone", "text_backbone", "image_proj", "text_proj"} <= set(params), method
      continue
    assert params["clip"]["visual"]["positional_embedding"].shape == (1 + (h // p) * (w // p),
                                                                      c.model.clip.vision_width)
    assert c.model.dtype == ("bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32")


def test_icfg_requires_an_explicit_selection_and_test_selection_is_loud(caplog):
  with pytest.raises(ValueError, match="select_on is not set.*select_on=none.*select_on=test"):
    config_checks.resolve_config(load("icfg"))
  c = load("icfg")
  c.eval.select_on = "test"
  c = config_checks.resolve_config(c)
  with caplog.at_level("WARNING"):
    logging.get_absl_logger().propagate = True
    config_checks.warn_if_test_selection(c)
  assert "SELECTED ON THE TEST SET" in caplog.text
  c = load("cuhk")
  c.eval.select_on = "best"
  with pytest.raises(ValueError, match="select_on='best'"):
    config_checks.resolve_config(c)


def test_resolution_returns_a_copy_and_reads_the_options_once():
  """resolve_config / fill_num_classes leave their input alone; resolving twice changes nothing; run_options reads
  the resolved config into frozen options."""
  raw = load("cuhk")
  before = raw.to_json_best_effort()
  c = config_checks.resolve_config(raw)
  assert raw.to_json_best_effort() == before and c.model.dtype != "auto"
  assert config_checks.resolve_config(c).to_json_best_effort() == c.to_json_best_effort()
  filled = config_checks.fill_num_classes(c, 7)
  assert (filled.model.num_classes, c.model.num_classes) == (7, None)
  with pytest.raises(ValueError, match="num_classes=7 but the training split has 5 identities"):
    config_checks.fill_num_classes(filled, 5)
  o = run_options(filled)
  assert (o.model.num_classes, o.loss, o.data.image_size, o.optim.lr) == (7, method_options(filled).loss,
                                                                         (384, 128), filled.optim.lr)
  with pytest.raises(AttributeError):
    o.data.root = "elsewhere"  # frozen: nothing downstream changes the run's options
  assert tuple(parse([f"--config={CONFIG_DIR}/cuhk.py:irra", "--config.eval.subsets=()"]).eval.subsets) == ()


def test_shape_and_parallelism_errors_before_compiling():
  c = load("cuhk")
  c.data.image_size = (384, 120)
  with pytest.raises(ValueError, match=r"image_size=\(384, 120\) is not divisible by the patch size 16"):
    config_checks.resolve_config(c)
  c = config_checks.resolve_config(load("cuhk"))
  c.train.batch_size = 60
  with pytest.raises(ValueError, match="batch_size=60 is not divisible by the number of devices"):
    config_checks.check_parallelism(c, shd.create_mesh())
  c.train.batch_size, c.eval.batch_size = 64, 100
  with pytest.raises(ValueError, match="eval.batch_size=100"):
    config_checks.check_parallelism(c, shd.create_mesh())


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
  c = load("cuhk")
  c.data.root = str(tmp_path / "nowhere" / "CUHK-PEDES")
  with pytest.raises(annotations.AnnotationError) as e:
    trainer.train_and_evaluate(c, str(tmp_path / "run"))
  msg = str(e.value)
  assert str(tmp_path / "nowhere" / "CUHK-PEDES") in msg and "config.data.root" in msg and "reid_raw.json" in msg
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # failed before building anything
