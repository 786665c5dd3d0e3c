"""Training faults: no checkpoint of a non-finite state, restores that fall back past damaged or poisoned
steps, eval-only results in their own file, resuming under changed settings refused, one-line config errors.

Every scenario starts from a copy of one straight 4-step run (CUHK fixture, tiny towers, SDM only, a checkpoint every
step) and must end where that run ended: a rerun of the same command always recovers.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import dataset_fixtures
import jax
import numpy as np
import pytest
from test_train import shrink

from tpsearch_jax import config_files
from tpsearch_jax import sharding as shd
from tpsearch_jax.configs import base
from tpsearch_jax.models import build_model
from tpsearch_jax.training import checkpointing, config_checks, eval_only, trainer
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.options import run_options
from tpsearch_jax.user_errors import UserError

STEPS = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _config(root, **overrides):
  c = shrink(base.get_config("clip"))
  c.data.name, c.data.root = "cuhk_pedes", root
  c.schedule.num_epochs, c.schedule.warmup_epochs = STEPS, 1
  c.eval.select_on, c.eval.splits = "none", ("test",)
  c.train.checkpoint_every_steps, c.train.keep_checkpoints, c.train.async_checkpointing = 1, STEPS + 1, False
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run: {"root", "workdir", "results" (text of results.json), "params" (host, step 4)}."""
  tmp = tmp_path_factory.mktemp("faults")
  root = dataset_fixtures.write_cuhk(str(tmp / "data"))
  workdir = str(tmp / "straight")
  trainer.train_and_evaluate(_config(root), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    results = f.read()
  return dict(root=root, workdir=workdir, results=results, params=_params(workdir, _config(root), STEPS),
              tmp=tmp)


def _abstract(config):
  c = config_checks.resolve_config(config.copy_and_resolve_references(), num_classes=3)
  options = run_options(c)
  abstract, _, _ = state_lib.abstract_train_state(options, build_model(options), shd.create_mesh())
  return abstract


def _params(workdir, config, step):
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    state, _ = ckpt.restore(_abstract(config), step)
  finally:
    ckpt.close()
  return jax.device_get(state.params)


def _copy(straight, name, keep_steps=range(1, STEPS + 1)):
  dst = str(straight["tmp"] / name)
  shutil.copytree(straight["workdir"], dst)
  os.remove(os.path.join(dst, "results.json"))
  for step in set(range(1, STEPS + 1)) - set(keep_steps):
    shutil.rmtree(os.path.join(dst, "checkpoints", str(step)))
  return dst


def _steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _assert_params_equal(got, want):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _damage_data_file(step_folder):
  """Cuts the largest array data file of a checkpoint step in half (a half-written or damaged copy)."""
  files = [p for p in glob.glob(os.path.join(step_folder, "state", "**", "*"), recursive=True) if os.path.isfile(p)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def test_straight_run_records_skips_and_settings(straight):
  results = json.loads(straight["results"])
  assert results["skipped"]["test"] == {"missing": 0, "corrupt": 0, "captions_dropped": 0}
  assert results["skipped"]["train"]["missing"] == 0
  meta = json.load(open(os.path.join(straight["workdir"], "checkpoints", str(STEPS), "meta", "metadata")))
  assert meta["settings"]["optim.lr"] == _config(straight["root"]).optim.lr


def test_step_with_finite_loss_and_nonfinite_update_is_never_saved_and_the_rerun_recovers(straight):
  """The reported poisoning: a diverging lr whose step has a finite loss but non-finite parameters afterwards."""
  workdir = _copy(straight, "diverging", keep_steps=(1, 2))
  diverging = _config(straight["root"], **{"optim.lr": 1e300, "train.allow_config_change": True})
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite (grad_norm|param_norm) at step 3 .*loss=[0-9]"):
    trainer.train_and_evaluate(diverging, workdir)
  assert _steps(workdir) == ["1", "2"]  # step 3 was not written
  with pytest.raises(UserError, match=r"optim.lr: 1e\+300 → 1e-05.*allow_config_change=True"):  # config.json: 1e300
    trainer.train_and_evaluate(_config(straight["root"]), workdir)
  trainer.train_and_evaluate(_config(straight["root"], **{"train.allow_config_change": True}), workdir)  # from 2
  _assert_params_equal(_params(workdir, _config(straight["root"]), STEPS), straight["params"])


def test_nonfinite_parameters_after_an_update_clear_the_finite_flag(straight):
  """A NaN in Adam's first moment: loss and gradients finite, the updated parameters are not."""
  c = config_checks.resolve_config(_config(straight["root"]), num_classes=3)
  options = run_options(c)
  model = build_model(options)
  mesh = shd.create_mesh(jax.devices()[:1])
  state, tx, sh = state_lib.create_train_state(options, model, mesh, jax.random.PRNGKey(0))
  poisoned = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(np.nan) if x.ndim and x.dtype == np.float32 else x,
                          state.opt_state)
  from test_train import random_batch
  step = state_lib.make_train_step(options.loss, model, tx, mesh, sh)
  _, m = step(state.replace(opt_state=poisoned), random_batch(c, 8))
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) and not m["finite"]
  assert trainer.first_nonfinite(m) == "param_norm"


@pytest.mark.parametrize("damage", ["data_file", "meta_item"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_step(straight, damage, caplog):
  workdir = _copy(straight, f"damaged_{damage}")
  newest = os.path.join(workdir, "checkpoints", str(STEPS))
  if damage == "data_file":
    _damage_data_file(newest)
  else:
    shutil.rmtree(os.path.join(newest, "meta"))
  trainer.train_and_evaluate(_config(straight["root"]), workdir)
  assert str(STEPS) in _steps(workdir)  # saved again by the rerun; the damaged one is kept in quarantine/
  assert os.listdir(os.path.join(workdir, "quarantine", f"checkpoints-{STEPS}-unreadable", "state"))
  assert checkpointing.quarantined(workdir)[0].startswith(f"{newest} moved here")
  assert any(f"checkpoint {newest} is unreadable" in r.getMessage() for r in caplog.records)
  _assert_params_equal(_params(workdir, _config(straight["root"]), STEPS), straight["params"])
  got = json.load(open(os.path.join(workdir, "results.json")))["splits"]["test"]
  want = json.loads(straight["results"])["splits"]["test"]
  assert {k: got[k] for k in ("R1", "mAP", "step")} == {k: want[k] for k in ("R1", "mAP", "step")}


def test_poisoned_checkpoint_from_an_older_version_is_set_aside(straight):
  """A non-finite state saved as the newest step (what the old NaN stop left behind) is passed over."""
  workdir = _copy(straight, "poisoned")
  config = _config(straight["root"])
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  state, meta = ckpt.restore(_abstract(config), STEPS)
  bad = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  ckpt.save(STEPS + 1, bad, dict(meta, step=STEPS + 1))
  ckpt.close()
  trainer.train_and_evaluate(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "quarantine", f"checkpoints-{STEPS + 1}-nonfinite"))
  assert "non-finite arrays" in checkpointing.quarantined(workdir)[0]
  assert json.load(open(os.path.join(workdir, "results.json")))["splits"]["test"]["step"] == STEPS


def test_no_intact_checkpoint_is_one_clear_error(straight):
  workdir = _copy(straight, "all_damaged", keep_steps=(3, 4))
  for step in (3, 4):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "meta"))
  with pytest.raises(checkpointing.NoIntactCheckpoint, match=r"no intact checkpoint .*checkpoints/4: unreadable.*"
                     r"checkpoints/3: unreadable.*use a new --workdir"):
    trainer.train_and_evaluate(_config(straight["root"]), workdir)


def test_resume_with_changed_lr_or_epochs_is_refused_unless_allowed(straight):
  workdir = _copy(straight, "changed", keep_steps=(1, 2))
  with pytest.raises(UserError, match=r"optim.lr: 1e-05 → 0.01.*allow_config_change=True"):
    trainer.train_and_evaluate(_config(straight["root"], **{"optim.lr": 1e-2}), workdir)
  with pytest.raises(UserError, match=r"schedule.num_epochs: 4 → 6"):
    trainer.train_and_evaluate(_config(straight["root"], **{"schedule.num_epochs": 6}), workdir)
  assert _steps(workdir) == ["1", "2"]
  moved = _config(straight["root"], **{"data.num_parallel_calls": 2})  # how fast, not what: resumes
  trainer.train_and_evaluate(moved, workdir)
  _assert_params_equal(_params(workdir, moved, STEPS), straight["params"])


def test_eval_only_writes_its_own_results_file(straight):
  workdir = _copy(straight, "eval_after")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    f.write(straight["results"])
  for choice in ("last", "auto"):
    payload = eval_only.evaluate_only(_config(straight["root"], **{"eval.checkpoint": choice}), workdir)
    assert payload["splits"]["test"]["R1"] == json.loads(straight["results"])["splits"]["test"]["R1"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == straight["results"]  # the training run's file is untouched
  written = json.load(open(os.path.join(workdir, f"results_eval_checkpoints_step{STEPS}.json")))
  assert written["splits"]["test"]["step"] == STEPS and written["skipped"]["test"]["corrupt"] == 0


# One-line errors of `python -m tpsearch_jax.main` (checked before anything is built).

@pytest.mark.parametrize("argv, message", [
    (["--config.optim.lrr=1"], r'--config.optim.lrr: config.optim has no field .lrr. \(did you mean "lr"\?\)'),
    (["--config.optim.learning_rate=1"], r"config.optim has no field 'learning_rate' \(its fields: b1, .*lr,"),
    (["--config.foo.bar=1"], r"--config.foo.bar: config has no field 'foo'"),
    (["--noconfig.train.fsdpp"], r'no field .fsdpp. \(did you mean "fsdp"\?\)'),
    (["--config=configs/nope.py"], r"--config=configs/nope.py: config file .*nope.py not found"),
    (["--config=configs/synthetic.py:nomethod"], r"unknown method 'nomethod'"),
])
def test_config_flag_mistakes_name_the_flag(argv, message):
  with pytest.raises(UserError, match=message):
    config_files.check_config_flags(["--config=configs/synthetic.py", *argv, "--workdir=/tmp/unused"])


def test_config_flags_that_exist_pass():
  config_files.check_config_flags(["--config", "configs/synthetic.py:fmfa", "--config.optim.lr=1",
                                   "--noconfig.data.augment", "--config.loss.mlm_head=full"])


@pytest.mark.parametrize("args, message", [
    (["--config.optim.learning_rate=1", "--workdir=W"], "config.optim has no field 'learning_rate'"),
    (["--workdir=W"], "--config is required"),
    (["--config=configs/synthetic.py", "--workdir=FILE"], "is a file, not a folder"),
])
def test_main_reports_input_mistakes_on_one_line(tmp_path, args, message):
  (tmp_path / "FILE").write_text("not a folder")
  args = [a.replace("=W", f"={tmp_path / 'W'}").replace("=FILE", f"={tmp_path / 'FILE'}") for a in args]
  if args[0].startswith("--config."):
    args = ["--config=configs/synthetic.py", *args]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-m", "tpsearch_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  errors = [line for line in out.stderr.splitlines() if line.startswith("tpsearch_jax.main: error")]
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr and len(errors) == 1 and message in errors[0], out.stderr[-2000:]


# Run identity: a finished run is never changed by a command with the wrong config or the wrong folder.

def _hashes(folder):
  """{relative path: sha256} of every file under ``folder``."""
  import hashlib
  out = {}
  for dirpath, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _finished_copy(straight, name):
  workdir = _copy(straight, name)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    f.write(straight["results"])
  return workdir


def test_rerun_with_another_model_config_is_refused_and_changes_nothing(straight):
  workdir = _finished_copy(straight, "wrong_config")
  before = _hashes(workdir)
  other = _config(straight["root"])
  other.model.clip.text_layers += 1  # another architecture: the state tree differs
  with pytest.raises(UserError, match=r"holds a run made with another config: model.clip.text_layers: 1 → 2\. "
                     r"Nothing was changed.*run's own config.*new --workdir"):
    trainer.train_and_evaluate(other, workdir)
  recipe = _config(straight["root"], **{"optim.lr": 3e-4})
  with pytest.raises(UserError, match=r"other settings: optim.lr: 1e-05 → 0.0003\. Nothing was changed.*"
                     r"allow_config_change=True"):
    trainer.train_and_evaluate(recipe, workdir)
  assert _hashes(workdir) == before


def test_checkpoints_of_another_shape_are_refused_not_set_aside(straight):
  """Without config.json (copied checkpoints), the checkpoint's own array shapes decide: a mismatch is a refusal."""
  workdir = _finished_copy(straight, "wrong_shape")
  os.remove(os.path.join(workdir, "config.json"))
  before = _hashes(workdir)
  other = _config(straight["root"])
  other.model.clip.embed_dim *= 2
  with pytest.raises(checkpointing.StateMismatch, match=r"checkpoints/4 holds a state of another shape .*arrays "
                     r"differ, first: .*saved \(.*\) vs \(.*\) now.*Nothing was changed"):
    trainer.train_and_evaluate(other, workdir)
  assert _hashes(workdir) == before and not os.path.exists(os.path.join(workdir, "quarantine"))


def test_eval_uses_the_runs_own_config_and_never_overwrites(straight):
  workdir = _finished_copy(straight, "eval_own_config")
  want = json.loads(straight["results"])["splits"]["test"]
  first = eval_only.evaluate_only(None, workdir)["splits"]["test"]  # no --config: config.json
  assert (first["R1"], first["mAP"], first["step"]) == (want["R1"], want["mAP"], want["step"])
  eval_only.evaluate_only(None, workdir)
  names = sorted(f for f in os.listdir(workdir) if f.startswith("results_eval_"))
  assert names == [f"results_eval_checkpoints_step{STEPS}{s}.json" for s in ("", "_2", "_2_config", "_config")]
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == straight["results"]


def test_eval_with_a_config_that_changes_the_run_is_refused(straight):
  workdir = _finished_copy(straight, "eval_wrong_config")
  before = _hashes(workdir)
  other = _config(straight["root"], **{"eval.batch_size": 4})  # an evaluation field: allowed
  other.model.clip.vision_layers += 1
  with pytest.raises(UserError, match=r"--config changes fields of the run in .*: model.clip.vision_layers: 1 → 2\. "
                     r"--mode=eval uses the run's own config"):
    eval_only.evaluate_only(other, workdir)
  assert _hashes(workdir) == before


def test_eval_in_a_folder_without_a_run_writes_nothing(straight, tmp_path):
  typo = str(tmp_path / "no_such_run")
  with pytest.raises(UserError, match=r"no_such_run holds no run"):
    eval_only.evaluate_only(_config(straight["root"]), typo)
  assert not os.path.exists(typo)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-m", "tpsearch_jax.main", "--mode=eval", f"--workdir={typo}"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  errors = [line for line in out.stderr.splitlines() if line.startswith("tpsearch_jax.main: error")]
  assert out.returncode == 2 and len(errors) == 1 and "holds no run" in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr and not os.path.exists(typo)
