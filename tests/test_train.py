"""Training loop: sharded step = single-device step, loss falls, CUHK recipe end to end, exact resume after SIGTERM,
non-finite loss stops the run. Tiny towers, 8 virtual CPU devices."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest

import dataset_fixtures
from tpsearch_jax.training import checkpointing
from tpsearch_jax import batch as batch_lib
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training import config_checks, eval_only, trainer
from tpsearch_jax.training.options import run_options
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax import sharding as shd
from tpsearch_jax.models import build_model

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs")


def load_config(dataset: str, method: str = "irra"):
  return load_config_module(os.path.join(CONFIG_DIR, f"{dataset}.py")).get_config(method)


def shrink(c, batch_size: int = 8):
  """Tiny towers (1 layer, width 32, 32×16 images, 16 tokens); everything else as configured."""
  c.model.clip.update(dict(embed_dim=16, patch_size=8, vision_width=32, vision_layers=1, vision_heads=4,
                           context_length=16, text_width=32, text_layers=1, text_heads=4))
  c.data.image_size = (32, 16)
  c.data.context_length = 16
  c.model.dtype = "float32"
  c.model.cross_layers = 1
  c.model.cross_heads = 4
  c.train.batch_size = batch_size
  c.train.log_every_steps = 1
  c.eval.batch_size = 8
  return c


def random_batch(c, batch_size: int, seed: int = 0, num_classes: int = 5) -> dict[str, np.ndarray]:
  """A train batch of the contract with random images and captions; identities repeat (2 rows per pid)."""
  rng = np.random.default_rng(seed)
  b = batch_lib.fake_train_batch(batch_lib.BatchOptions(tuple(c.data.image_size), int(c.data.context_length)),
                                 batch_size)
  b["images"] = rng.normal(size=b["images"].shape).astype(np.float32)
  words = rng.integers(300, 2000, size=(batch_size, 8))
  b["caption_ids"][:, 1:9] = words
  b["caption_ids"][:, 9] = 49407
  b["caption_ids"][:, 4] = words[:, 3]
  b["mlm_ids"] = b["caption_ids"].copy()
  b["mlm_ids"][:, 2] = 49405
  b["mlm_labels"][:] = 0
  b["mlm_labels"][:, 2] = b["caption_ids"][:, 2]
  b["pids"] = (np.arange(batch_size) // 2 % num_classes).astype(np.int32)
  return b


@pytest.fixture(scope="module")
def tiny():
  """Resolved tiny config (lr 1e-3), its model, an initial state on the host and a 1-device jitted step.

  Method "clip" (SDM only) keeps compilation short; SDM couples every row of the batch, which is what the sharding
  tests need. IRRA (SDM + ID + MLM) runs in the end-to-end tests below.
  """
  c = shrink(load_config("cuhk", "clip"), batch_size=16)
  c.optim.lr = 1e-3
  c.schedule.warmup_epochs = 0
  c = config_checks.resolve_config(c, num_classes=5)
  options = run_options(c)
  model = build_model(options)
  mesh1 = shd.create_mesh(jax.devices()[:1])
  state, tx, sh1 = state_lib.create_train_state(options, model, mesh1, jax.random.PRNGKey(0))
  host_state = jax.device_get(state)
  step1 = state_lib.make_train_step(options.loss, model, tx, mesh1, sh1)
  return dict(config=c, model=model, tx=tx, mesh1=mesh1, sh1=sh1, host_state=host_state, step1=step1)


def _run(step, state, batches):
  losses = []
  for b in batches:
    state, m = step(state, b)
    losses.append(float(m["loss"]))
  return state, losses


def test_step_on_8_devices_equals_step_on_1_device(tiny):
  c, model, tx = tiny["config"], tiny["model"], tiny["tx"]
  batches = [random_batch(c, 16, seed=s) for s in (1, 2)]
  want, want_losses = _run(tiny["step1"], jax.device_put(tiny["host_state"], tiny["sh1"]), batches)
  want = jax.device_get(want)

  for fsdp in (False, True):
    c8 = c.copy_and_resolve_references()
    c8.train.fsdp, c8.train.fsdp_min_size = fsdp, 1
    mesh8 = shd.create_mesh()
    options8 = run_options(c8)
    _, _, sh8 = state_lib.abstract_train_state(options8, model, mesh8)
    if fsdp:
      specs = [s.spec for s in jax.tree.leaves(sh8.params)]
      assert any(shd.DATA in tuple(spec) for spec in specs)  # some parameters really are split
    step8 = state_lib.make_train_step(options8.loss, model, tx, mesh8, sh8)
    got, got_losses = _run(step8, jax.device_put(tiny["host_state"], sh8), batches)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    got = jax.device_get(got)
    # Adam divides by |g| + eps, so reduction-order noise in tiny gradients (rarely used embedding rows) can reach
    # ~1% of one update (lr 1e-3): params atol 3e-5. Moments: compared at 1e-4 of the largest entry of the same
    # moment (mu or nu) over the whole tree; some true values are 0 (attention key biases) and carry only noise.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got.params), jax.tree.leaves(want.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5, err_msg=f"fsdp={fsdp} {jax.tree_util.keystr(path)}")
    moments = [(jax.tree_util.keystr(p), a, b) for (p, a), b in
               zip(jax.tree_util.tree_leaves_with_path(got.opt_state), jax.tree.leaves(want.opt_state))]
    kind = lambda name: ".mu" if ".mu" in name else ".nu" if ".nu" in name else name  # noqa: E731
    scale = {}
    for name, _, b in moments:
      scale[kind(name)] = max(scale.get(kind(name), 0.0), float(np.abs(b).max()))
    for name, a, b in moments:
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale[kind(name)], err_msg=f"fsdp={fsdp} {name}")
    assert int(got.step) == int(want.step) == 2
  # the steps moved the parameters (so the comparison is not between two untouched copies)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), want.params, tiny["host_state"].params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_padded_short_batch_step_on_8_devices_equals_the_short_batch_on_1_device(tiny):
  """data.drop_last=False: the short last batch (11 rows) padded to 16 with repeats of its rows and a "valid" mask,
  sharded over 8 devices, takes the same step as the 11 rows alone on one device."""
  c, model, tx = tiny["config"], tiny["model"], tiny["tx"]
  n = 11
  full = random_batch(c, 16, seed=7)
  short = {k: v[:n] for k, v in full.items()}
  rows = np.arange(16) % n  # samplers.StepIndexer.global_batch: the short batch cycled to B rows
  padded = {k: v[rows] for k, v in short.items()} | {"valid": np.arange(16) < n}
  want, want_metrics = tiny["step1"](jax.device_put(tiny["host_state"], tiny["sh1"]), short)
  mesh8 = shd.create_mesh()
  options = run_options(c)
  _, _, sh8 = state_lib.abstract_train_state(options, model, mesh8)
  got, got_metrics = state_lib.make_train_step(options.loss, model, tx, mesh8, sh8)(
      jax.device_put(tiny["host_state"], sh8), padded)
  assert len(jax.tree.leaves(got.params)[0].sharding.device_set) == 8
  np.testing.assert_allclose(float(got_metrics["loss"]), float(want_metrics["loss"]), rtol=1e-5)
  unpadded_loss = float(tiny["step1"](jax.device_put(tiny["host_state"], tiny["sh1"]),
                                      {k: v for k, v in padded.items() if k != "valid"})[1]["loss"])
  assert not np.isclose(unpadded_loss, float(want_metrics["loss"]), rtol=1e-3), "the padding rows change nothing"
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(got.params)),
                          jax.tree.leaves(jax.device_get(want.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5, err_msg=jax.tree_util.keystr(path))


def test_loss_falls_on_a_fixed_batch(tiny):
  batch = random_batch(tiny["config"], 16, seed=3)
  _, losses = _run(tiny["step1"], jax.device_put(tiny["host_state"], tiny["sh1"]), [batch] * 20)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


def test_non_finite_loss_names_step_and_term(tiny):
  batch = random_batch(tiny["config"], 16, seed=4)
  batch["images"][3, 0, 0, 0] = np.nan
  state = jax.device_put(tiny["host_state"], tiny["sh1"])
  _, metrics = tiny["step1"](state, batch)
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite \w+ at step 12;.*sdm=nan"):
    trainer.summarize_train_metrics([(12, metrics)])


def test_summary_averages_and_reports_first_bad_step():
  ok = {"loss": 2.0, "sdm": 1.5, "finite": True}
  bad = {"loss": float("inf"), "sdm": 1.0, "id": float("inf"), "finite": False}
  assert trainer.summarize_train_metrics([(1, ok), (2, dict(ok, loss=4.0))]) == {"loss": 3.0, "sdm": 1.5}
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite id at step 3;.*values: id=inf, loss=inf, sdm=1$"):
    trainer.summarize_train_metrics([(2, ok), (3, bad), (4, bad)])


def _cuhk_config(root, **overrides):
  c = shrink(load_config("cuhk", "irra"))
  c.data.root = root
  c.schedule.num_epochs = 3
  c.schedule.warmup_epochs = 1
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.mark.slow
def test_cuhk_recipe_end_to_end_and_eval_mode(tmp_path):
  root = dataset_fixtures.write_cuhk(str(tmp_path / "data"))
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(_cuhk_config(root), workdir)

  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk == json.loads(json.dumps(result))
  assert on_disk["dataset"] == "cuhk_pedes" and on_disk["select_on"] == "val"
  # CUHK fixture: val = 2 images / 4 captions, test = 3 images / 5 captions.
  assert (on_disk["splits"]["val"]["num_gallery"], on_disk["splits"]["val"]["num_queries"]) == (2, 4)
  assert (on_disk["splits"]["test"]["num_gallery"], on_disk["splits"]["test"]["num_queries"]) == (3, 5)
  best_step = on_disk["splits"]["test"]["step"]
  assert os.path.isdir(on_disk["splits"]["test"]["checkpoint"])
  assert on_disk["splits"]["test"]["checkpoint"] == os.path.join(workdir, "best", str(best_step))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))
  for row in on_disk["splits"].values():
    assert set(row) >= {"R1", "R5", "R10", "mAP", "mINP", "num_queries", "num_gallery", "step", "checkpoint"}

  # --mode=eval on the same workdir restores the best checkpoint and reproduces its numbers.
  again = eval_only.evaluate_only(_cuhk_config(root), workdir)
  for split in ("val", "test"):
    for k in ("R1", "R5", "mAP", "mINP", "step", "checkpoint"):
      assert again["splits"][split][k] == on_disk["splits"][split][k], (split, k)


def _final_state(workdir, config, steps_per_epoch=1):
  c = config_checks.resolve_config(config, num_classes=3)
  options = run_options(c)
  abstract, _, _ = state_lib.abstract_train_state(options, build_model(options), shd.create_mesh(),
                                                  steps_per_epoch=steps_per_epoch)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  state, meta = ckpt.restore(abstract)
  ckpt.close()
  return jax.device_get(state), meta


class _Killed(Exception):
  """Stands for a process killed between two checkpoints (what it computed after the last one is lost)."""


@pytest.mark.slow
def test_resume_inside_an_epoch_after_sigterm_and_after_a_kill_equals_the_uninterrupted_run(tmp_path):
  """drop_last=False gives 2 steps per epoch (9 captions, batch 8: the second batch padded), so both interruptions
  fall inside an epoch: SIGTERM after step 1 (saved by the stop, not by the schedule), then a kill during step 5 after
  the scheduled checkpoint of step 3. Each rerun starts at the saved step (sampler position, schedule, RNG) and the
  end state is equal, bit for bit, to the run that was never interrupted."""
  root = dataset_fixtures.write_cuhk(str(tmp_path / "data"))
  overrides = {"schedule.num_epochs": 3, "eval.select_on": "none", "eval.splits": ("test",),
               "train.checkpoint_every_steps": 3, "data.drop_last": False, "train.keep_checkpoints": 10}
  config = lambda: _cuhk_config(root, **overrides)  # noqa: E731
  straight = str(tmp_path / "straight")
  trainer.train_and_evaluate(config(), straight)

  seen = []

  def sigterm_after_step_1(step):
    seen.append(step)
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  def killed_in_step_5(step):
    seen.append(step)
    if step == 5:
      raise _Killed

  interrupted = str(tmp_path / "interrupted")
  assert trainer.train_and_evaluate(config(), interrupted, callbacks=[sigterm_after_step_1]) == {
      "preempted": True, "step": 1}
  assert sorted(os.listdir(os.path.join(interrupted, "checkpoints"))) == ["1"]
  with pytest.raises(_Killed):
    trainer.train_and_evaluate(config(), interrupted, callbacks=[killed_in_step_5])
  assert sorted(os.listdir(os.path.join(interrupted, "checkpoints"))) == ["1", "3"]
  assert not os.path.exists(os.path.join(interrupted, "results.json"))
  trainer.train_and_evaluate(config(), interrupted, callbacks=[seen.append])
  assert seen == [1, 2, 3, 4, 5, 4, 5, 6]  # each rerun starts after its newest checkpoint

  want, want_meta = _final_state(straight, config(), steps_per_epoch=2)
  got, got_meta = _final_state(interrupted, config(), steps_per_epoch=2)
  assert got_meta["step"] == want_meta["step"] == 6 and got_meta["data_position"] == 6
  assert got_meta["steps_per_epoch"] == 2
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  res_a = json.load(open(os.path.join(straight, "results.json")))["splits"]["test"]
  res_b = json.load(open(os.path.join(interrupted, "results.json")))["splits"]["test"]
  assert {k: res_a[k] for k in ("R1", "mAP", "step")} == {k: res_b[k] for k in ("R1", "mAP", "step")}


def test_mesh_config_shapes_fsdp_axis_and_errors(tiny):
  c = tiny["config"].copy_and_resolve_references()

  def shape(cfg):
    o = run_options(cfg)
    return dict(shd.run_mesh(o.mesh_sizes, o.fsdp).shape)

  assert shape(c) == {"data": 8, "fsdp": 1}
  c.mesh.fsdp = 2
  assert shape(c) == {"data": 4, "fsdp": 2}
  c.mesh.data, c.mesh.fsdp = 2, -1
  assert shape(c) == {"data": 2, "fsdp": 4}
  legacy = tiny["config"].copy_and_resolve_references()
  legacy.train.fsdp = True  # shorthand for FSDP over every device
  assert shape(legacy) == {"data": 1, "fsdp": 8}
  for (data, fsdp), message in [((3, 1), r"config.mesh.data × config.mesh.fsdp = 3 × 1 = 3 but there are 8 devices"),
                                ((-1, 3), r"config.mesh.fsdp=3 does not divide the 8 devices"),
                                ((-1, -1), r"config.mesh.data and config.mesh.fsdp are both -1"),
                                ((0, 1), r"config.mesh.data=0: expected a positive number")]:
    with pytest.raises(ValueError, match=message):
      shd.run_mesh((data, fsdp))
  # Params are split over "fsdp" only (replicated over "data"); the batch over every device.
  mesh = shd.create_mesh(data=4, fsdp=2)
  c.train.fsdp_min_size = 1
  _, _, sh = state_lib.abstract_train_state(run_options(c), tiny["model"], mesh)
  specs = [tuple(s.spec) for s in jax.tree.leaves(sh.params)]
  assert any(shd.FSDP in spec for spec in specs) and not any(shd.DATA in spec for spec in specs)
  assert shd.batch_sharding(mesh).spec == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_step_on_data_by_fsdp_mesh_equals_step_on_1_device(tiny):
  """mesh.data=4 × mesh.fsdp=2: FSDP over its axis, data parallel over the rest; the same step as on 1 device."""
  c, model, tx = tiny["config"].copy_and_resolve_references(), tiny["model"], tiny["tx"]
  c.mesh.data, c.mesh.fsdp, c.train.fsdp_min_size = 4, 2, 1
  batches = [random_batch(c, 16, seed=s) for s in (5, 6)]
  want, want_losses = _run(tiny["step1"], jax.device_put(tiny["host_state"], tiny["sh1"]), batches)
  options = run_options(c)
  mesh = shd.run_mesh(options.mesh_sizes, options.fsdp)
  _, _, sh = state_lib.abstract_train_state(options, model, mesh)
  got, got_losses = _run(state_lib.make_train_step(options.loss, model, tx, mesh, sh),
                         jax.device_put(tiny["host_state"], sh), batches)
  np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
  leaf = jax.tree.leaves(got.params)[0]
  assert len(leaf.sharding.device_set) == 8
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(got.params)),
                          jax.tree.leaves(jax.device_get(want.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-5, err_msg=jax.tree_util.keystr(path))
