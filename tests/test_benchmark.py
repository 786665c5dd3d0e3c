"""Smoke test of ``python -m tpsearch_jax.benchmark`` (ci preset, not a timing test) and its trace summary."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

import conftest
from tpsearch_jax import benchmark
from tpsearch_jax.bench import profile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(xla_cache: str | None = None) -> dict:
  """The benchmark processes' environment; with ``xla_cache`` (conftest's session cache) they read and write the
  programs they share (single-process runs: the cache is safe there), so compile times are cache hits."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=conftest.xla_flags(8))
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  if xla_cache:
    env.update(JAX_COMPILATION_CACHE_DIR=xla_cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(conftest.CACHE_MIN_COMPILE_S))
  return env


def test_import_does_not_load_tensorflow():
  code = "import sys, tpsearch_jax.benchmark; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  subprocess.run([sys.executable, "-c", code], check=True, env=_env(), cwd=ROOT, timeout=120)


def test_ci_run_writes_records_and_prints_the_table(tmp_path, xla_cache):
  """One tiny method through every section, in a fresh process that must never import TensorFlow."""
  out = tmp_path / "bench.json"
  code = ("import sys\nfrom tpsearch_jax import benchmark\n"
          f"benchmark.main(['--preset=ci', '--methods=clip', '--out={out}'])\n"
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported during the run'\n")
  proc = subprocess.run([sys.executable, "-c", code], env=_env(xla_cache), cwd=tmp_path, timeout=300,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "| measurement | value | unit | config | note |" in proc.stdout
  payload = json.loads(out.read_text())
  records = {r["name"]: r for r in payload["records"]}
  for r in payload["records"]:
    assert {"name", "value", "unit", "device", "config"} <= set(r), r
    assert r["device"] == "cpu" and r["num_devices"] == 8
  expected = ["train/clip/compile_time", "train/clip/samples_per_sec", "train/clip/flops_per_step",
              "eval/clip/encode_images_per_sec", "eval/clip/encode_texts_per_sec", "eval/clip/ci_test_eval_time",
              "metrics/ci/retrieval_metrics", "metrics/ci/retrieval_metrics_from_embeddings",
              "search/queries_per_sec"]
  for name in expected:
    assert name in records, sorted(records)
    assert records[name]["value"] > 0, records[name]
  # No device peak on CPU: MFU and device memory are reported as n/a, not invented.
  assert records["train/clip/mfu"]["value"] is None
  assert records["train/clip/peak_memory"]["value"] is None
  assert records["train/clip/samples_per_sec"]["config"]["batch_size"] == 8


def test_top_ops_sums_device_op_lane(tmp_path):
  """Durations are summed per op name on the device's "XLA Ops" lane only; host and other lanes are ignored."""
  events = [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 1, "tid": 10, "name": "thread_name", "args": {"name": "XLA Ops"}},
      {"ph": "M", "pid": 1, "tid": 11, "name": "thread_name", "args": {"name": "Stream #1"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 1, "tid": 10, "name": "fusion.1", "dur": 300.0},
      {"ph": "X", "pid": 1, "tid": 10, "name": "fusion.1", "dur": 300.0},
      {"ph": "X", "pid": 1, "tid": 10, "name": "dot.2", "dur": 400.0},
      {"ph": "X", "pid": 1, "tid": 11, "name": "kernel_xyz", "dur": 5000.0},
      {"ph": "X", "pid": 2, "tid": 20, "name": "PjitFunction", "dur": 9000.0},
  ]
  folder = tmp_path / "plugins" / "profile" / "run"
  folder.mkdir(parents=True)
  with gzip.open(folder / "host.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  hlo = ('  %fusion.1 = f32[8]{0} fusion(%p.1), kind=kLoop, calls=%c, metadata={op_name="jit(f)/mlm_head/dot_general"}\n'
         '  ROOT %dot.2 = f32[8]{0} dot(%a, %b), metadata={op_name="jit(f)/attn/dot_general" stack_frame_id=1}\n')
  top = profile.top_ops(str(tmp_path), 5, profile.hlo_op_names(hlo))
  assert [(o["name"], o["count"], o["source"]) for o in top] == [
      ("fusion.1", 2, "jit(f)/mlm_head/dot_general"), ("dot.2", 1, "jit(f)/attn/dot_general")]
  assert top[0]["total_ms"] == pytest.approx(0.6)
  assert top[0]["percent"] == pytest.approx(60.0)


def test_unknown_skip_section_is_rejected():
  with pytest.raises(SystemExit):
    benchmark.parse_args(["--skip=train,bogus"])


def test_accelerator_check_ci_path_writes_the_summary(tmp_path, xla_cache):
  """benchmarks/accelerator_check.sh --preset=ci: every benchmark run of the script, then the merged table."""
  out = tmp_path / "acc"
  proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "accelerator_check.sh"), "--preset=ci", f"--out={out}",
                         f"--python={sys.executable}"], env=_env(xla_cache), cwd=ROOT, timeout=900,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for name in ("main", "xla_attention", "remat", "full_mlm_head"):
    assert (out / f"{name}.json").is_file() and (out / f"{name}.md").is_file(), name
  table = (out / "summary.md").read_text().splitlines()
  rows = [line.split("|")[1:-1] for line in table if line.startswith("| clip |")]
  # one train row per variant: (attention, remat, MLM head) = the script's four runs
  assert sorted((r[1].strip(), r[2].strip(), r[3].strip()) for r in rows[:4]) == sorted(
      [("xla", "False", "masked"), ("xla", "False", "masked"), ("xla", "True", "masked"), ("xla", "False", "full")])
  assert all(float(r[6].replace(",", "")) > 0 for r in rows[:4])  # ms/step measured
  assert any("ci" in line and "evaluation" not in line for line in table if line.startswith("| clip | ci"))


def test_demo_preset_is_the_synthetic_configs_train_step():
  """--preset=demo: the methods start from configs/synthetic.py (its towers, cross-former, batch), 200 classes."""
  from tpsearch_jax.bench import presets  # pylint: disable=import-outside-toplevel
  args = benchmark.parse_args(["--preset=demo", "--dtype=float32", "--mlm_head=full"])
  config = presets.method_config("irra", presets.PRESETS["demo"], args)
  clip = config.model.clip
  assert (clip.vision_width, clip.vision_layers, clip.patch_size, tuple(clip.image_size)) == (128, 2, 8, (96, 32))
  assert (clip.text_width, clip.context_length, clip.vocab_size) == (128, 32, 49408)
  assert (config.model.cross_layers, config.model.num_classes, config.train.batch_size) == (1, 200, 64)
  assert config.loss.mlm_head == "full"
