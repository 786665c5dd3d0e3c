"""config.init.run: params whose path and shape match come from a saved run (best, else last, or WORKDIR:STEP), the
rest equal a fresh initialisation with the same seed; a shape mismatch is refused naming the tensor. Tiny towers on
8 virtual CPU devices, the target FSDP-sharded."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from tpsearch_jax import batch as batch_lib
from tpsearch_jax import sharding as shd
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.models import build_model
from tpsearch_jax.training import checkpointing, config_checks, init_from_run
from tpsearch_jax.training import setup as setup_lib
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.optim import path_name
from tpsearch_jax.training.options import run_options
from tpsearch_jax.user_errors import UserError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs")


def tiny_config(method: str, embed_dim: int = 16, num_classes: int = 4):
  c = load_config_module(os.path.join(CONFIG_DIR, "cuhk.py")).get_config(method)
  c.model.clip.update(dict(embed_dim=embed_dim, patch_size=8, vision_width=32, vision_layers=1, vision_heads=4,
                           context_length=16, text_width=32, text_layers=1, text_heads=4))
  c.model.part.update(dict(num_queries=2, num_parts=2, heads=4))
  c.data.image_size = (32, 16)
  c.data.context_length = 16
  c.model.dtype = "float32"
  return config_checks.resolve_config(c, num_classes=num_classes)


def save_run(workdir, config, saves):
  """A run folder: config.json and, per (folder, step, offset), the state initialised from seed 0 with ``offset``
  added to every parameter (so each save is told apart). → {(folder, step): {path: numpy params}}."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  options = run_options(config)
  state, _, _ = state_lib.create_train_state(options, build_model(options), shd.create_mesh(), jax.random.PRNGKey(0))
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  params = {}
  for which, step, offset in saves:
    shifted = state.replace(params=jax.tree.map(lambda x: x + offset, state.params))
    ckpt.save(step, shifted, {"step": step}, which)
    params[(which, step)] = flat(shifted.params)
  ckpt.close()
  return params


def flat(tree):
  return {path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  saved = save_run(workdir, tiny_config("clip"), [("checkpoints", 5, 1.0), ("best", 3, 2.0)])
  return workdir, saved


@pytest.fixture(scope="module")
def target():
  """A fresh FSDP-sharded pcc state (seed 0) over the 8 devices: (config, mesh, tx, shardings, state)."""
  c = tiny_config("pcc")
  c.train.fsdp = True
  c.train.fsdp_min_size = 1
  options = run_options(c)
  mesh = shd.run_mesh(options.mesh_sizes, options.fsdp)
  state, tx, shardings = state_lib.create_train_state(options, build_model(options), mesh, jax.random.PRNGKey(0))
  return c, mesh, tx, shardings, state


def test_loads_matching_towers_keeps_the_rest_fresh(source_run, target):
  workdir, saved = source_run
  c, mesh, tx, shardings, state = target
  c = c.copy_and_resolve_references()
  c.init.run = workdir
  fresh = flat(state.params)
  out = init_from_run.initialise_from_run(state, c.init.run, c.init.run_exclude, mesh, tx, shardings)
  got, best = flat(out.params), saved[("best", 3)]
  clip_paths = [p for p in got if p.startswith("clip/")]
  assert clip_paths and set(clip_paths) == {p for p in best if p.startswith("clip/")}
  for p in clip_paths:  # "auto": the best checkpoint, not the newer last one
    np.testing.assert_array_equal(got[p], best[p], err_msg=p)
  new = [p for p in got if not p.startswith("clip/")]
  assert any(p.startswith("part_model/") for p in new) and any(p.startswith("classifier/") for p in new)
  for p in new:
    np.testing.assert_array_equal(got[p], fresh[p], err_msg=p)
  # placed with the target's (FSDP) shardings; optimizer state re-initialised on the merged params
  for x, s in zip(jax.tree.leaves(out.params), jax.tree.leaves(shardings.params)):
    assert x.sharding == s
  moments = [v for k, v in flat(out.opt_state).items() if k.endswith(("/mu", "/nu")) or "/mu/" in k or "/nu/" in k]
  assert moments and not any(np.any(v) for v in moments)


def test_step_choice_and_exclude(source_run, target):
  workdir, saved = source_run
  c, mesh, tx, shardings, state = target
  c = c.copy_and_resolve_references()
  c.init.run, c.init.run_exclude = f"{workdir}:5", r"^clip/visual/"
  fresh = flat(state.params)
  out = init_from_run.initialise_from_run(state, c.init.run, c.init.run_exclude, mesh, tx, shardings)
  got, last = flat(out.params), saved[("checkpoints", 5)]
  for p in got:
    want = last[p] if p.startswith("clip/") and not p.startswith("clip/visual/") else fresh[p]
    np.testing.assert_array_equal(got[p], want, err_msg=p)
  with pytest.raises(UserError, match=r"config.init.run: no step 4 in .*best/4"):
    init_from_run.load_source_run(f"{workdir}:4", mesh)


def test_shape_mismatch_and_bad_folder_refused(source_run, tmp_path):
  workdir, saved = source_run
  c = tiny_config("clip", embed_dim=8)
  options = run_options(c)
  abstract, _, _ = state_lib.abstract_train_state(options, build_model(options), shd.create_mesh())
  source = {tuple(k.split("/")): v for k, v in saved[("best", 3)].items()}
  with pytest.raises(UserError, match=r"^config.init.run: parameter clip/\S+ has shape \(\d+, 16\) in the run but "
                     r"\(\d+, 8\) here"):
    init_from_run.plan(abstract.params, _nest(source))
  with pytest.raises(UserError, match="config.init.run: .* not a directory"):
    init_from_run.load_source_run(str(tmp_path / "nothing"), shd.create_mesh())
  c.init.run, c.init.clip = workdir, "/some/clip"
  with pytest.raises(UserError, match="config.init.run is set together with config.init.clip"):
    setup_lib.init_run_spec(c.init)


def _nest(flat_tree):
  out = {}
  for path, x in flat_tree.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = x
  return out


def test_plan_and_table_count_every_tensor():
  fresh = {"clip": {"w": np.zeros((2, 3))}, "head": {"b": np.zeros(4)}}
  source = {"clip": {"w": np.ones((2, 3)), "extra": np.ones(5)}}
  decisions = init_from_run.plan(fresh, source)
  assert decisions == {"clip/w": "loaded", "head/b": "new", "clip/extra": "unused"}
  lines = init_from_run.table(fresh, source, decisions).splitlines()
  assert lines[1].split() == ["clip", "1", "6", "0", "0", "0", "0", "1", "5"]
  assert lines[2].split() == ["head", "0", "0", "1", "4", "0", "0", "0", "0"]
  assert init_from_run.parse_spec("/a:b/run:12") == ("/a:b/run", 12)
  assert init_from_run.parse_spec("/a/run") == ("/a/run", None)


@pytest.mark.parametrize("method", ["clip", "irra", "fmfa", "pcc", "combined", "pcc_global", "pcc_cmr_freq"])
def test_finetune_configs_load_every_tower_param_of_the_pretraining_run(method):
  from tpsearch_jax.config_files import load_config
  pre = config_checks.resolve_config(load_config(os.path.join(CONFIG_DIR, "synthetic.py:pretrain")), num_classes=10)
  ft = config_checks.resolve_config(load_config(os.path.join(CONFIG_DIR, f"synthetic_finetune.py:{method}")),
                                    num_classes=10)
  assert ft.init.run == "/tmp/tpsearch_synthetic_pretrain" and ft.data.synthetic.seed != pre.data.synthetic.seed
  assert ft.data.root != pre.data.root and pre.data.synthetic.caption_style == "plain"
  options = [run_options(c) for c in (ft, pre)]
  shapes = [jax.eval_shape(lambda o=o: build_model(o).init(jax.random.key(0), {
      k: jax.numpy.asarray(v) for k, v in batch_lib.fake_train_batch(o.batch_options, 2).items()})["params"])
            for o in options]
  decisions = init_from_run.plan(*shapes)
  assert {p for p, d in decisions.items() if d == "loaded"} == {p for p in decisions if p.startswith("clip/")}


def test_finetune_study_configs_resolve():
  from tpsearch_jax.config_files import load_config
  from tpsearch_jax.study import runner
  for size, seeds in (("main", 5), ("ladder", 3), ("switches", 3)):
    study = load_config(os.path.join(CONFIG_DIR, f"study_finetune.py:{size}"))
    assert len(study.seeds) == seeds
    for method in study.methods:
      c = config_checks.resolve_config(runner.run_config(study, method, 2), num_classes=10)
      assert c.seed == 2 and c.init.run and c.optim.lr == 1e-4
  c = runner.run_config(load_config(os.path.join(CONFIG_DIR, "study_finetune.py:switches")), "pcc_repaired", 0)
  assert (c.loss.ranking_mining, c.loss.ranking_reduction, c.model.part.kv_norm) == ("batch_hard", "mean", "modality")
  assert (c.loss.id_pieces, c.model.embed_weights.global_) == ("all", 1.0)  # the switches are over the lineage
  # pcc / combined: the recommended part recipe; *_lineage and the ladder: the presets' (lineage) values.
  main, ladder = (load_config(os.path.join(CONFIG_DIR, f"study_finetune.py:{size}")) for size in ("main", "ladder"))
  for study, method, want in ((main, "pcc", ("global", 12.0)), (main, "combined", ("global", 12.0)),
                              (main, "pcc_lineage", ("all", 1.0)), (main, "combined_lineage", ("all", 1.0)),
                              (ladder, "pcc_global", ("all", 1.0)), (ladder, "pcc_fixed_margin", ("all", 1.0))):
    c = runner.run_config(study, method, 0)
    assert (c.model.name, c.loss.id_pieces, c.model.embed_weights.global_) == (method.split("_")[0], *want), method
