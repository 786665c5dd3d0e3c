"""One tiny trained part-level run shared by the search, server, browser and notebook tests (trained once per session),
and an untrained tiny `clip` run folder for tests of global models.

``trained_run(tmp_path_factory)`` trains ``configs/synthetic.py:combined`` cut down to CPU-test size with the real
trainer: 10 identities × 8 images of 48×16 (no near-twins; 6 train / 2 val / 2 test identities), width-32 one-layer
towers, 3 stripes, SDM on the global embedding + triplet on the coarse ones + CMR on the parts (no MLM / EFA / ID,
which dominate a CPU step or need more steps), 30 epochs of batch 16, on one device. The folder has config.json,
checkpoints, results.json and the TensorBoard events, and lives in the session's base temp dir (shared by the workers
of ``pytest -n``), so every test module of a session reuses it.
"""

from __future__ import annotations

import json
import os

import filelock
import jax

import conftest
from tpsearch_jax import sharding
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.models import build_model
from tpsearch_jax.training import checkpointing, trainer
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.options import run_options

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "synthetic.py")
NUM_IDS, IMAGES_PER_ID, EPOCHS = 10, 8, 30


def tiny_config(root: str):
  c = load_config_module(CONFIG).get_config("combined")
  c.data.root = root
  c.data.synthetic = dict(num_ids=NUM_IDS, images_per_id=IMAGES_PER_ID, seed=0, image_size=(48, 16), twin_fraction=0.0,
                          split_fractions=(0.6, 0.2, 0.2))
  c.data.image_size = (48, 16)
  c.model.clip.update(dict(embed_dim=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=4,
                           context_length=32, text_width=32, text_layers=1, text_heads=4))
  c.model.part.update(heads=4, num_parts=3, num_queries=2)
  c.loss.update(dict(mlm=0.0, efa=0.0, asdm=0.0, id=0.0, sdm=1.0))
  c.optim.param_groups = ()
  c.schedule.num_epochs = EPOCHS
  c.train.batch_size = 16
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 10 ** 6  # one checkpoint, at the end
  c.train.async_checkpointing = False
  c.eval.batch_size = 16
  c.eval.every_epochs = 10
  return c


def trained_run(tmp_path_factory) -> dict:
  """{"workdir", "data" (dataset root), "imgs", "records" (reid_raw.json)} of the session's tiny trained run, trained
  by the first test that asks for it; the workers of ``pytest -n`` share it (one trains, a file lock holds the others)."""
  base = conftest.session_root(tmp_path_factory) / "tiny_search_run"
  workdir, data = base / "run", base / "synthetic_pedes"
  done = base / "DONE"
  with filelock.FileLock(f"{base}.lock"):
    if not done.exists():
      # On one device: the tests only read the run, and its 180 steps split over the session's 8 virtual devices
      # take twice the CPU (2-core machine, 2026-12-07: 73 s → 35 s).
      trainer.train_and_evaluate(tiny_config(str(data)), str(workdir), devices=jax.devices()[:1])
      done.write_text("ok")
  with open(data / "reid_raw.json") as f:
    records = json.load(f)
  return {"workdir": str(workdir), "data": str(data), "imgs": str(data / "imgs"), "records": records}


def person_of(path: str) -> int:
  """synthetic_pedes file name → its identity (``cam<c>/<id:05d>_<k:02d>.jpg``)."""
  return int(os.path.basename(path).split("_")[0])


def untrained_clip_run(workdir: str) -> str:
  """A `clip` run folder as training leaves it (config.json + one checkpoint) with random weights: tiny towers of
  width 32 reading 48×16 images and 32 tokens. → workdir."""
  c = load_config_module(CONFIG).get_config("clip")
  c.data.root = os.path.join(workdir, "unused_data")
  c.data.image_size = (48, 16)
  c.data.context_length = 32
  c.model.clip.update(dict(embed_dim=16, patch_size=8, vision_width=32, vision_layers=1, vision_heads=4,
                           context_length=32, text_width=32, text_layers=1, text_heads=4))
  c.model.num_classes = 4
  c.train.batch_size = 8
  options = run_options(c)
  model, mesh = build_model(options), sharding.create_mesh()
  state, _, _ = state_lib.create_train_state(options, model, mesh, jax.random.PRNGKey(5))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(c.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  ckpt.save(1, state, {"step": 1})
  ckpt.close()
  return workdir
