"""Test set-up: 8 virtual CPU devices so every sharded path runs, no accelerator from TensorFlow, and one persistent
XLA compilation cache for the session (every worker of ``pytest -n``), so a program that one test compiled is read
back, not compiled again, by the next test that builds the same one (the tiny models of many modules are the same
programs under fresh Python closures, which jit's in-memory cache does not recognise).

The cache is this process's only: it is set through ``jax.config``, not the environment, so the processes tests start
(``python -m tpsearch_jax.main`` ...) compile for themselves. Multi-process CPU runs must not read it
(docs/known_issues.md). ``TPSEARCH_TEST_XLA_CACHE=0`` turns it off (to time the suite without it).
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test programs are compiled for their numerics, not their speed: LLVM without its optimisation passes. Measured on
# test_models + test_clip_model + test_train (2-core CPU, 2026-12-07): CPU time 266 → 225 s, the same results.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a process the tests start: ``devices`` virtual CPU devices, compiled like the tests' own."""
  return " ".join((f"--xla_force_host_platform_device_count={devices}", *FAST_COMPILE_FLAGS))


for _flag in xla_flags(8).split():
  if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# The longest test files, longest first (seconds on the 2-core machine). Under ``pytest -n 2 --dist loadfile
# --no-loadscope-reorder`` (``make test``) the workers take files in this order, then the rest in collection order,
# so no long file starts last.
LONGEST_FIRST = (
    "test_multiprocess.py", "test_models.py", "test_backbones.py", "test_benchmark.py", "test_train.py",
    "test_recipes.py", "test_browser.py", "test_faults_search.py", "test_loss_wiring.py", "test_loss_masks.py",
    "test_galleries.py", "test_faults_training.py", "test_study.py", "test_losses.py", "test_init_from_run.py",
    "test_search.py", "test_clip_model.py")


def pytest_collection_modifyitems(config, items):
  if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects, and all must order the same way
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def session_root(tmp_path_factory) -> pathlib.Path:
  """The folder every worker of this session shares: the base temp dir, or its parent under pytest-xdist."""
  base = pathlib.Path(tmp_path_factory.getbasetemp())
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# Programs that compile faster than this are not cached. At 0 every eager op's executable is written and looked up
# too: measured on tests/test_losses.py + test_part_model_options.py (2-core CPU, 2026-12-07), CPU time 93 s at 0,
# 68 s without the cache, 64–71 s at 0.2–1.0 s.
CACHE_MIN_COMPILE_S = 0.5


@pytest.fixture(scope="session", autouse=True)
def xla_cache(tmp_path_factory):
  """One persistent compilation cache for the session's workers, for programs that take CACHE_MIN_COMPILE_S or more
  to compile. A size limit turns on the cache's file lock, so two workers never read an entry that the other is
  writing."""
  if os.environ.get("TPSEARCH_TEST_XLA_CACHE", "1") == "0":
    yield None
    return
  folder = session_root(tmp_path_factory) / "xla_cache"
  folder.mkdir(exist_ok=True)
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")
  previous = {k: getattr(jax.config, k) for k in keys}
  for k, v in zip(keys, (str(folder), CACHE_MIN_COMPILE_S, 0, 16 * 2 ** 30)):
    jax.config.update(k, v)
  yield str(folder)
  for k, v in previous.items():
    jax.config.update(k, v)
