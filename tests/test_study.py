"""The study driver (tpsearch_jax.study) at a tiny size: runs, resumability, the summary files."""

from __future__ import annotations

import json
import os
import statistics

import jax
import ml_collections
import numpy as np

from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.study import run_config, run_study, summarize
from tpsearch_jax.study.runner import run_dir, variants

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
  first = run_study(study, out, devices=jax.devices()[:1])  # one device: the runs' steps are tiny
  assert [r["status"] for r in first] == ["trained", "trained"]
  for m in study.methods:
    with open(os.path.join(out, m, "seed0", "study_run.json")) as f:
      assert json.load(f)["devices"] == 1, m
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


def _write_run(out: str, method: str, seed: int, rows: dict, wall: float) -> None:
  wd = run_dir(out, method, seed)
  os.makedirs(wd)
  with open(os.path.join(wd, "results.json"), "w") as f:
    json.dump({"splits": rows}, f)
  with open(os.path.join(wd, "study_run.json"), "w") as f:
    json.dump({"wall_s": wall}, f)


def _cells(text: str, method: str, section: str) -> list[str]:
  """The cells of ``method``'s row in the table under ``section`` (a Markdown heading)."""
  part = text.split(section, 1)[1]
  row = next(ln for ln in part.splitlines() if ln.startswith(f"| `{method}` |"))
  return [c.strip() for c in row.strip("|").split("|")]


def test_summary_table_is_mean_and_sample_std_over_seeds(tmp_path):
  """Three seeds of one method, two of another (a seed missing), one of a third: every cell against mean ± sample
  standard deviation (n − 1) computed here with the statistics module."""
  out = str(tmp_path)
  rng = np.random.default_rng(0)
  keys = ("R1", "R5", "R10", "mAP", "mINP")
  seeds = {"clip": (0, 1, 2), "pcc": (0, 2), "irra": (1,)}
  written = {}
  for method, have in seeds.items():
    for seed in have:
      rows = {split: {k: float(rng.uniform(10, 90)) for k in keys} | {"num_queries": 40, "num_gallery": 20}
              for split in ("val", "test", "test_hard")}
      wall = float(rng.uniform(100, 200))
      _write_run(out, method, seed, rows, wall)
      written[method, seed] = rows, wall
  study = ml_collections.ConfigDict({"methods": tuple(seeds), "seeds": (0, 1, 2), "steps_per_epoch": 0,
                                     "variants": ()})
  text = summarize(study, out)

  def cell(values):
    values = list(values)
    if len(values) == 1:
      return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

  for method, have in seeds.items():
    runs = [written[method, s] for s in have]
    test = _cells(text, method, "## Test")
    assert test[1] == str(len(have))
    assert test[2:7] == [cell(r["test"][k] for r, _ in runs) for k in keys], method
    assert test[7] == cell(r["val"]["R1"] for r, _ in runs) and test[8] == cell(w for _, w in runs)
    hard = _cells(text, method, "## Hard test queries")
    assert hard[2:7] == [cell(r["test_hard"][k] for r, _ in runs) for k in keys], method
  r1 = [written["clip", s][0]["test"]["R1"] for s in (0, 1, 2)]
  assert f"{statistics.stdev(r1):.2f}" != f"{statistics.pstdev(r1):.2f}"  # a population std would show
