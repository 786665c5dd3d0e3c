"""The study driver (tpsearch_jax.study) at a tiny size: runs, resumability, the summary files."""

from __future__ import annotations

import os

from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.study import run_config, run_study, summarize
from tpsearch_jax.study.runner import variants

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "study_synthetic.py")


def _tiny_study(data_root: str):
  study = load_config_module(CONFIG).get_config("tiny")
  study.methods = ("clip", "pcc_global")
  study.seeds = (0,)
  study.overrides = tuple(study.overrides) + (("data.root", data_root),)
  return study


def test_variants_are_overrides_of_their_preset():
  study = load_config_module(CONFIG).get_config()
  table = variants(study)
  assert set(table) == set(study.methods) and len(study.seeds) >= 3
  assert table["pcc_global"] == ("pcc", {"model.use_parts": False, "loss.cmr": 0.0})
  c = run_config(study, "pcc_cmr_freq", 2)
  assert (c.model.name, c.loss.cmr_commonality, c.seed, c.model.use_parts) == ("pcc", "freq", 2, True)
  assert run_config(study, "pcc_fixed_margin", 0).loss.cmr_floor == c.loss.cmr_margin  # margin never scaled down
  fmfa = run_config(study, "fmfa", 0)
  assert fmfa.optim.lr == run_config(study, "pcc", 0).optim.lr  # one optimizer for every method
  big = load_config_module(CONFIG).get_config("accelerator")
  assert run_config(big, "irra", 0).data.synthetic.num_ids > c.data.synthetic.num_ids


def test_tiny_study_runs_resumes_and_summarizes(tmp_path):
  study = _tiny_study(str(tmp_path / "data"))
  out = str(tmp_path / "study")
  first = run_study(study, out)
  assert [r["status"] for r in first] == ["trained", "trained"]
  results = [os.path.join(out, m, "seed0", "results.json") for m in study.methods]
  stamps = [os.path.getmtime(p) for p in results]
  second = run_study(study, out)
  assert [r["status"] for r in second] == ["skipped", "skipped"]
  assert [os.path.getmtime(p) for p in results] == stamps
  text = summarize(study, out)
  for name in ("summary.md", "summary.json", "val_r1.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert "`clip`" in text and "`pcc_global`" in text and "test R1" in text
  assert "| `pcc_global` | 1 |" in text
