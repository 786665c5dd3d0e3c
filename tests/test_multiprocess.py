"""Several processes for real: ``python -m tpsearch_jax.main`` as 2 processes on localhost (2 virtual CPU devices
each, jax.distributed over 127.0.0.1, gloo collectives) against 1 process with 4 devices, same global batch.

One chain of runs on a tiny synthetic_pedes model (3 epochs × 7 steps, evaluation every epoch) covers:
  R   1 process × 4 devices, from scratch (the reference; keeps every epoch's checkpoint)
  A   2 processes × 2 devices, from scratch; after the step-9 checkpoint (inside epoch 2: a checkpoint every 3 steps)
      process 1 stops answering (SIGSTOP, then SIGKILL): process 0 must stop within the heartbeat timeout, with the
      runtime's "another task died" message
  A'  the same command again: resumes in the middle of epoch 2 from A's checkpoint and finishes (= R); the persistent
      compilation cache the processes share is warm by then (the project turns it off: docs/known_issues.md)
  C   2 processes, FSDP across them (mesh.data=1, mesh.fsdp=-1: every large array split over the 4 devices of both
      processes), resuming from R's 1-process step-6 checkpoint, inside epoch 1 (= R)
  B   in this process (1 process, 8 devices): resumes from A's 2-process checkpoint (= R)
  E   2 processes, process 1 raises before the first collective: both must exit, not wait for each other
  S   2 processes with a short stall timeout and a long heartbeat timeout, beside A' and C; process 1 is stopped
      (SIGSTOP) after its first checkpoint: process 0's watchdog writes its stacks and exits with the stalled status
      and one line (the short timeout holds from the first finished step on: start-up is not held to it)
plus --mode=eval and the run loader (``runs.load_run``) on A's 2-process checkpoints in this process.
Every subprocess has a hard timeout and runs in its own process group, killed on failure with its log's tail.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import xla_flags
from tpsearch_jax import evaluate, user_errors
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.data import synthetic
from tpsearch_jax.training import eval_only, runs, trainer

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "synthetic.py")
METHOD = "clip"
DEVICES = 2  # per process of the 2-process runs
HEARTBEAT_S = 10
RUN_TIMEOUT_S = 240  # hard limit for one run (all its processes)
STEPS_PER_EPOCH, EPOCHS = 7, 3
LAST = STEPS_PER_EPOCH * EPOCHS
EVERY = 3  # a checkpoint every 3 steps: 3, 6, 9, ... — most inside an epoch
# S's stall timeout. It holds once the first step has finished (its first checkpoint, step 3), so it only has to
# outlast the gaps between steps 3 and 6 on a loaded machine (a few seconds), not the start-up and first compile.
STALL_S = 20
# 58 train captions → 7 steps of 8; val and test: 10 images (2 gallery batches of 8, the second one padded), 21 / 22
# captions (3 query batches).
SYNTHETIC = dict(num_ids=24, images_per_id=2, image_size=(32, 16), split_fractions=(0.6, 0.2, 0.2))
OVERRIDES = {
    **{f"data.synthetic.{k}": v for k, v in SYNTHETIC.items()}, "data.image_size": (32, 16), "data.context_length": 16,
    "model.clip.embed_dim": 16, "model.clip.vision_width": 32, "model.clip.vision_layers": 1,
    "model.clip.vision_heads": 4, "model.clip.context_length": 16, "model.clip.text_width": 32,
    "model.clip.text_layers": 1, "model.clip.text_heads": 4,
    "train.batch_size": 8, "eval.batch_size": 8, "schedule.num_epochs": EPOCHS, "eval.every_epochs": 1,
    "train.log_every_steps": 5, "train.checkpoint_every_steps": EVERY, "train.keep_checkpoints": LAST // EVERY + 1,
    # Two processes sum the gradients over devices in another order than one process: float noise that training
    # amplifies. At synthetic.py's lr 3e-3 / Adam eps 1e-8 it grows to similarity differences of ~1e-3 in 21 steps,
    # enough to swap near-tied gallery items; at lr 3e-4 with the reference recipe's eps 1e-3 it stays ~1e-6.
    "optim.lr": 3e-4, "optim.eps": 1e-3,
    "data.identity_sampler": False,  # the shuffled pass these tolerances were measured with (58 captions, 7 steps)
}
# Final parameters (21 Adam steps): 4 devices in one process vs 2 × 2 over gloo (vs 8 devices, vs FSDP) differ only
# by the order of the gradient reductions. Measured: relative L2 distance of the whole parameter vector ≤ 1e-7 and
# largest element difference ≤ 1.3e-6, while training moved them by 3.7e-3 (relative) and up to 3.9e-3 per element.
PARAM_REL_L2, PARAM_ATOL = 2e-6, 2e-5
METRIC_ATOL = 1e-6  # percent; the rankings are the same, only float64 sums differ
REQUIRED = ("R1", "R5", "R10", "mAP", "mINP", "num_queries", "num_gallery", "step")


def _write_config(folder: str, data_root: str) -> str:
  """configs/synthetic.py with OVERRIDES (and data.root) as a config file of its own; → its path."""
  path = os.path.join(folder, "tiny_synthetic.py")
  with open(path, "w") as f:
    f.write(f"""\"\"\"The tiny synthetic_pedes run of tests/test_multiprocess.py.\"\"\"
from tpsearch_jax.config_files import load_config_module
from tpsearch_jax.configs.base import apply_overrides

OVERRIDES = {dict(OVERRIDES, **{"data.root": data_root})!r}


def get_config(method={METHOD!r}):
  c = load_config_module({os.path.abspath(CONFIG)!r}).get_config(method)
  apply_overrides(c, OVERRIDES, "tiny_synthetic.py")
  return c
""")
  return path


def _command(workdir: str, config: str, extra=()) -> list[str]:
  return [sys.executable, "-m", "tpsearch_jax.main", f"--config={config}:{METHOD}", f"--workdir={workdir}",
          f"--heartbeat_timeout_s={HEARTBEAT_S}", "--initialization_timeout_s=120", *extra]


def _free_port() -> int:
  """A port for a coordinator: below the kernel's ephemeral range (where outgoing connections, gloo's among them, take
  their local ports, so a port found free there can be taken before the coordinator binds it), never handed out twice
  in this session, and bindable now."""
  with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low = int(f.read().split()[0])
  candidates = list(range(max(low - 8000, 1024), low))
  random.Random(os.getpid()).shuffle(candidates)
  for port in candidates:
    if port in _TAKEN:
      continue
    _TAKEN.add(port)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    return port
  raise RuntimeError("no free port below the ephemeral range")


_TAKEN: set[int] = set()


def _no_core_files() -> None:  # a process stopped by the distributed runtime aborts (SIGABRT)
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Job:
  """The processes of one run (each in its own process group, output to a log file); killed when not finished."""

  def __init__(self, name: str, workdir: str, config: str, cache: str, num_processes: int, devices: int,
               extra=(), extra_for: dict[int, list[str]] | None = None):
    self.name, self.workdir, self.logs, self.procs = name, workdir, [], []
    port = _free_port()
    for i in range(num_processes):
      env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "TPSEARCH_"))}
      env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), TF_CPP_MIN_LOG_LEVEL="2",
                 XLA_FLAGS=xla_flags(devices), JAX_COMPILATION_CACHE_DIR=cache,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
      if num_processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
                   JAX_PROCESS_ID=str(i), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
      log = f"{workdir}.{name}.process{i}.log"
      self.logs.append(log)
      with open(log, "w") as out:
        args = [*extra, *(extra_for or {}).get(i, [])]
        self.procs.append(subprocess.Popen(_command(workdir, config, args), env=env, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           cwd=os.path.dirname(workdir), preexec_fn=_no_core_files))
    self.started = time.monotonic()
    self.seconds = float("nan")

  def text(self, i: int) -> str:
    with open(self.logs[i], errors="replace") as f:
      return f.read()

  def tail(self, lines: int = 40) -> str:
    return "\n".join(f"--- {self.name} process {i} ({log}):\n" + "\n".join(self.text(i).splitlines()[-lines:])
                     for i, log in enumerate(self.logs))

  def dump_stacks(self) -> None:
    """Every live process writes its threads' stacks into its log (SIGUSR1: tpsearch_jax.main's faulthandler)."""
    for p in self.procs:
      if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
          os.kill(p.pid, signal.SIGUSR1)
    time.sleep(2)

  def kill(self, i: int | None = None) -> None:
    for p in self.procs if i is None else [self.procs[i]]:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        p.wait()

  def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
    """Exit codes; kills every process and fails when the run outlives ``timeout`` (from its start)."""
    for p in self.procs:
      left = timeout - (time.monotonic() - self.started)
      try:
        p.wait(timeout=max(left, 0.1))
      except subprocess.TimeoutExpired:
        self.dump_stacks()
        self.kill()
        pytest.fail(f"{self.name} did not finish within {timeout} s; killed (stacks at the end of each log).\n"
                    f"{self.tail(120)}")
    self.seconds = time.monotonic() - self.started
    return [p.returncode for p in self.procs]

  def check(self) -> None:
    codes = self.wait()
    if any(codes):
      pytest.fail(f"{self.name} failed with exit codes {codes}\n{self.tail()}")


def _copy_run(src: str, dst: str, max_step: int | None = None) -> str:
  """Copy of a work directory's finished checkpoints (optionally only steps <= max_step); nothing else."""
  for sub in ("checkpoints", "best"):
    os.makedirs(os.path.join(dst, sub), exist_ok=True)
    for name in os.listdir(os.path.join(src, sub)) if os.path.isdir(os.path.join(src, sub)) else ():
      if name.isdigit() and (max_step is None or int(name) <= max_step):
        shutil.copytree(os.path.join(src, sub, name), os.path.join(dst, sub, name))
  return dst


def _wait_for(path: str, job: Job, timeout: float) -> None:
  while not os.path.isdir(path):
    if any(p.poll() is not None for p in job.procs):
      job.kill()
      pytest.fail(f"{job.name} ended before {path} was written\n{job.tail()}")
    if time.monotonic() - job.started > timeout:
      job.dump_stacks()
      job.kill()
      pytest.fail(f"{job.name}: no {path} within {timeout} s\n{job.tail()}")
    time.sleep(0.05)


def _start_stall_job(root, config: str, cache: str) -> Job:
  """S: heartbeats far longer than the stall timeout (STALL_S)."""
  return Job("S", str(root / "S"), config, cache, 2, DEVICES, extra=["--heartbeat_timeout_s=600",
                                                                     f"--config.train.stall_timeout_s={STALL_S}"])


def _stall_result(s: Job, limit: int = STALL_S) -> dict:
  """S's process 1 frozen after the first checkpoint: process 0's watchdog must end the run (status 4, one line
  naming the last finished step, its stacks in WORKDIR/stall_0.txt)."""
  _wait_for(os.path.join(s.workdir, "checkpoints", str(EVERY)), s, RUN_TIMEOUT_S)
  os.kill(s.procs[1].pid, signal.SIGSTOP)
  stopped = time.monotonic()
  try:
    code0 = s.procs[0].wait(timeout=limit + RUN_TIMEOUT_S // 2)
  except subprocess.TimeoutExpired:
    s.dump_stacks()
    s.kill()
    pytest.fail(f"S: process 0 still running {limit + RUN_TIMEOUT_S // 2} s after process 1 stopped\n{s.tail()}")
  seconds = time.monotonic() - stopped
  s.kill(1)
  stack_file = os.path.join(s.workdir, "stall_0.txt")
  return dict(exit_code=code0, seconds=seconds, log=s.text(0), limit=limit,
              stacks=open(stack_file).read() if os.path.exists(stack_file) else None)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """Runs E, R, A (stopped), A', C (see the module docstring); returns their folders, logs and timings."""
  root = tmp_path_factory.mktemp("multiprocess")
  data = str(root / "data")
  synthetic.ensure(data, **SYNTHETIC)  # generated once, before any process looks for it
  cache = str(root / "xla_cache")
  started = time.monotonic()
  jobs = []
  try:
    config = _write_config(str(root), data)
    out = {"data": data, "config": config}
    # E: process 1 raises (a bad config value) before the first collective; process 0 must not wait for it forever.
    e = Job("E", str(root / "E"), config, cache, 2, DEVICES, extra_for={1: ["--config.eval.select_on=bogus"]})
    r = Job("R", str(root / "R"), config, cache, 1, 2 * DEVICES)
    a = Job("A", str(root / "A"), config, cache, 2, DEVICES)
    jobs += [e, r, a]
    # A: once the step-9 checkpoint (inside epoch 2; the epoch-1 best was written before it) is complete, process 1
    # dies silently: frozen by SIGSTOP, its sockets stay open (a lost host), so only the coordinator's heartbeat check
    # can notice.
    _wait_for(os.path.join(a.workdir, "checkpoints", str(3 * EVERY)), a, RUN_TIMEOUT_S)
    os.kill(a.procs[1].pid, signal.SIGSTOP)
    killed_at = time.monotonic()
    try:
      code0 = a.procs[0].wait(timeout=HEARTBEAT_S + 50)
    except subprocess.TimeoutExpired:
      a.dump_stacks()
      a.kill()
      pytest.fail(f"process 0 still running {HEARTBEAT_S + 50} s after process 1 stopped\n{a.tail()}")
    a.kill(1)
    a.seconds = time.monotonic() - a.started
    out["kill"] = dict(exit_code=code0, seconds=time.monotonic() - killed_at, log=a.text(0))
    out["killed_copy"] = _copy_run(a.workdir, str(root / "B"))  # the 2-process checkpoints, for run B
    out["error"] = dict(exit_codes=e.wait(), logs=[e.text(0), e.text(1)])
    r.check()
    # A' (same command, resumes), C (FSDP, from R's epoch-1 checkpoint) and S side by side.
    a2 = Job("A2", a.workdir, config, cache, 2, DEVICES)
    c = Job("C", _copy_run(r.workdir, str(root / "C"), 2 * EVERY), config, cache, 2, DEVICES,
            extra=["--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.train.fsdp_min_size=1"])
    s = _start_stall_job(root, config, cache)
    jobs += [a2, c, s]
    out["stall"] = _stall_result(s)
    a2.check()
    c.check()
    out.update(R=r, A=a, A2=a2, C=c, seconds=time.monotonic() - started)
    print(f"\nmultiprocess chain: {out['seconds']:.0f} s (" + ", ".join(f"{j.name} {j.seconds:.0f} s" for j in jobs[1:])
          + f"); process 0 stopped {out['kill']['seconds']:.1f} s after process 1 stopped; S's process 0 stopped "
          + f"{out['stall']['seconds']:.0f} s after its process 1", flush=True)
    yield out
  finally:
    for j in jobs:
      j.kill()


def _results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _assert_same_results(got: dict, want: dict, what: str) -> None:
  assert got.keys() == want.keys(), what
  for section in ("splits", "last"):
    assert (section in got) == (section in want), (what, section)
    for split, row in want.get(section, {}).items():
      for k in REQUIRED:
        assert got[section][split][k] == pytest.approx(row[k], abs=METRIC_ATOL), (what, section, split, k)


def _rel_l2(got, want) -> float:
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
  a, b = flat(got), flat(want)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _assert_same_params(got, want, what: str) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL, err_msg=f"{what} {jax.tree_util.keystr(path)}")
  distance = _rel_l2(got, want)
  print(f"\n{what}: relative L2 distance {distance:.2e}", flush=True)
  assert distance <= PARAM_REL_L2, (what, distance)


def _final_params(workdir: str):
  run = runs.load_run(workdir, "last")
  assert run.step == LAST, (workdir, run.step)
  return jax.device_get(run.params)


def _slice_lines(text: str) -> list[tuple[int, int, int, int, list[int]]]:
  """(process, lo, hi, step, examples) from the trainer's "process p/P reads rows lo:hi ..." lines."""
  pattern = r"process (\d+)/\d+ reads rows (\d+):(\d+) of every global batch of \d+; step (\d+) examples: \[([\d, ]*)\]"
  return [(int(p), int(lo), int(hi), int(s), [int(x) for x in ex.split(",") if x.strip()])
          for p, lo, hi, s, ex in re.findall(pattern, text)]


def _scored(text: str) -> list[tuple[int, int]]:
  """(queries scored by this process, rows it read) per evaluation."""
  return [(int(n), int(m)) for n, m in re.findall(r"scores its (\d+) queries \(of (\d+) rows read\)", text)]


def test_two_processes_equal_one_process(chain):
  r, a, a2 = chain["R"], chain["A"], chain["A2"]
  want = _results(r.workdir)
  _assert_same_results(_results(a.workdir), want, "2 processes (killed + resumed) vs 1 process")
  assert f"{STEPS_PER_EPOCH} steps/epoch" in r.text(0)
  assert want["splits"]["val"]["step"] > 0 and want["splits"]["test"]["num_gallery"] == 10
  ref = _final_params(r.workdir)
  _assert_same_params(_final_params(a.workdir), ref, "2 processes")
  first = runs.load_run(r.workdir, os.path.join(r.workdir, "checkpoints", str(2 * EVERY)))
  assert _rel_l2(jax.device_get(first.params), ref) > 100 * PARAM_REL_L2  # training moved them far beyond it

  # Each process reads only its own slice of every global batch: rows 0:4 and 4:8 of the same global batch.
  (_, _, _, step, full), = _slice_lines(r.text(0))
  lines = sorted(_slice_lines(a.text(0)) + _slice_lines(a.text(1)))
  assert [(p, lo, hi, s) for p, lo, hi, s, _ in lines] == [(0, 0, 4, 0), (1, 4, 8, 0)]
  assert step == 0 and lines[0][4] + lines[1][4] == full and len(full) == 8
  resumed = sorted(_slice_lines(a2.text(0)) + _slice_lines(a2.text(1)))
  assert [(p, lo, hi) for p, lo, hi, _, _ in resumed] == [(0, 0, 4), (1, 4, 8)] and resumed[0][3] == resumed[1][3]

  # Evaluation stays sharded: each process scores only the queries it read, together all of them, every time.
  per_process = [_scored(a2.text(0)), _scored(a2.text(1))]
  assert len(per_process[0]) == len(per_process[1]) >= 3
  totals = sorted({want["splits"][s]["num_queries"] for s in want["splits"]})
  for (n0, m0), (n1, m1) in zip(*per_process):
    assert 0 < n0 <= m0 and 0 < n1 <= m1 and n0 + n1 in totals and max(n0, n1) < n0 + n1

  # Only process 0 writes TensorBoard events (files named after the writer's pid) and results.json.
  events = [f for f in os.listdir(a.workdir) if f.startswith("events.out.tfevents")]
  assert events and {int(f.split(".")[-3]) for f in events} <= {a.procs[0].pid, a2.procs[0].pid}, events
  assert "Results written to" in a2.text(0) and "Results written to" not in a2.text(1)


def test_killed_process_stops_the_other_and_rerun_resumes(chain):
  kill, a, a2 = chain["kill"], chain["A"], chain["A2"]
  assert kill["exit_code"] != 0
  # Stopped by the heartbeat check (HEARTBEAT_S), far sooner than the 300 s shutdown barrier or the run timeout;
  # measured 11–25 s on a loaded 2-core machine, bounded here at 5 heartbeats + 60 s of margin.
  assert kill["seconds"] < 5 * HEARTBEAT_S + 60, kill["seconds"]
  assert "stopped sending heartbeats" in kill["log"] and "another task died" in kill["log"], kill["log"][-3000:]
  m = re.search(r"Resumed from \S+ at step (\d+)", a2.text(0))
  assert m and int(m.group(1)) >= 3 * EVERY and int(m.group(1)) % STEPS_PER_EPOCH, a2.tail()  # inside an epoch
  assert "Resumed from" in a2.text(1)


def test_stalled_run_ends_with_its_stacks_and_one_line(chain):
  stall = chain["stall"]
  assert stall["exit_code"] == user_errors.STALLED_STATUS, stall["log"][-3000:]
  lines = [line for line in stall["log"].splitlines() if line.startswith("tpsearch_jax.main: error (process 0)")]
  assert len(lines) == 1 and "stalled: nothing finished for" in lines[0], stall["log"][-3000:]
  m = re.search(r"last finished step: (\d+)", lines[0])
  assert m and int(m.group(1)) >= EVERY, lines[0]
  idle = re.search(r"nothing finished for (\d+) s \(limit (\d+) s", lines[0])
  assert idle and int(idle.group(2)) == stall["limit"] <= int(idle.group(1)), lines[0]  # not before the timeout
  assert stall["seconds"] < stall["limit"] + 60, stall["seconds"]  # the short limit, not the 600 s heartbeat
  assert stall["stacks"] and "Thread" in stall["stacks"] and "tpsearch_jax/training/trainer.py" in stall["stacks"]


def test_error_in_one_process_stops_the_other(chain):
  """Process 1 raises (a config mistake: one line, status 2); it exits at once (no shutdown barrier) and process 0
  stops within the heartbeat timeout."""
  codes, logs = chain["error"]["exit_codes"], chain["error"]["logs"]
  assert codes[1] == 2 and codes[0] != 0, codes
  assert "tpsearch_jax.main: error (process 1): config.eval.select_on='bogus'" in logs[1]
  assert "process 1/2 failed: config.eval.select_on='bogus'" in logs[1]
  assert "exiting process 1 without the shutdown barrier" in logs[1]
  assert "another task died" in logs[0]
  failed, stopped = _log_time(logs[1], "process 1/2 failed"), _log_time(logs[0], "Terminating process")
  assert 0 < stopped - failed < 5 * HEARTBEAT_S + 60, (failed, stopped)  # the heartbeat, not the 300 s barrier


def _log_time(text: str, needle: str) -> float:
  """POSIX time of the absl log line (``E1201 11:33:57.688191 ...``, local time, no year) that contains ``needle``."""
  line = next(line for line in text.splitlines() if needle in line)
  month, day, clock = re.match(r"[IWEF](\d\d)(\d\d) (\d+:\d+:[\d.]+) ", line).groups()
  now = datetime.datetime.now()
  stamp = datetime.datetime.strptime(f"{now.year}-{month}-{day} {clock}", "%Y-%m-%d %H:%M:%S.%f")
  if stamp > now + datetime.timedelta(days=1):  # logged last year (a run across New Year)
    stamp = stamp.replace(year=now.year - 1)
  return stamp.timestamp()


def test_two_process_checkpoints_restore_in_one_process(chain, tmp_path):
  """B: 1 process × 8 devices resumes from A's 2-process checkpoint; --mode=eval and the search loader read A'."""
  r, a = chain["R"], chain["A"]
  config = load_config_module(chain["config"]).get_config(METHOD)  # what the subprocesses ran
  want = _results(r.workdir)
  ref = _final_params(r.workdir)
  assert jax.process_count() == 1 and jax.device_count() == 8 != 2 * DEVICES

  b = chain["killed_copy"]
  _assert_same_results(trainer.train_and_evaluate(config, b), want, "1 process × 8 devices resumed from 2 processes")
  _assert_same_params(_final_params(b), ref, "1 process resumed from 2 processes")

  # --mode=eval on a copy of the 2-process run: its best checkpoint gives the numbers it reported.
  copy = _copy_run(a.workdir, str(tmp_path / "eval"))
  rows = eval_only.evaluate_only(config, copy)["splits"]
  reported = _results(a.workdir)["splits"]
  for split in reported:
    for k in evaluate.METRIC_KEYS + ("num_queries", "num_gallery", "step"):
      assert rows[split][k] == pytest.approx(reported[split][k], abs=METRIC_ATOL), (split, k)

  # The run loader of search and --mode=eval restores the 2-process params on this mesh.
  shutil.copy(os.path.join(a.workdir, "config.json"), copy)  # the run's resolved config, as training leaves it
  loaded = runs.load_run(copy, "last")
  assert loaded.checkpoint.endswith(f"checkpoints/{LAST}") and loaded.mesh.size == 8
  _assert_same_params(jax.device_get(loaded.params), ref, "runs.load_run of the 2-process run")


def test_fsdp_two_processes_resume_from_one_process_checkpoint(chain):
  c, r = chain["C"], chain["R"]
  assert "Mesh {'data': 1, 'fsdp': 4}" in c.text(0) and "params over ('fsdp',)" in c.text(0)
  m = re.search(r"Resumed from \S+ at step (\d+)", c.text(0))
  assert m and int(m.group(1)) == 2 * EVERY  # inside epoch 1
  _assert_same_results(_results(c.workdir), _results(r.workdir), "2 processes FSDP resumed from 1 process")
  _assert_same_params(_final_params(c.workdir), _final_params(r.workdir), "2 processes FSDP")
  # The arrays split over both processes were written collectively: each process wrote its own shards.
  state = os.path.join(c.workdir, "checkpoints", str(LAST), "state")
  assert {f for f in os.listdir(state) if f.startswith("ocdbt.process_")} >= {"ocdbt.process_0", "ocdbt.process_1"}
