# tpsearch_jax — set-up, tests and the demo. `make test` works on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# For CPU training runs (the demo): glibc malloc with every thread on the main arena, no mmap, no trimming. XLA's CPU
# runtime allocates one temp buffer per step (278 MB for the demo), by default mmap'd, faulted in and unmapped every
# step (docs/cpu_training.md). Not for the tests: compilation-heavy work runs slower with it.
CPU_TRAIN_MALLOC ?= glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: env browser test demo benchmark clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@PYBIN=$$(tools/find_python.sh) || exit 1; \
	  echo "using $$PYBIN"; \
	  [ -x $(PY) ] || $$PYBIN -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

env: $(VENV)/.installed browser

# Headless Chromium + its driver for tests/test_browser.py (Debian packages; as root, else through sudo).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	    echo "warning: not root and no sudo: install chromium and chromium-driver for tests/test_browser.py"; exit 0; fi; \
	  command -v apt-get >/dev/null || { echo "warning: no apt-get: install chromium + chromedriver yourself"; exit 0; }; \
	  echo "installing chromium + chromium-driver (apt-get; the browser test needs them)"; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || \
	    { echo "error: apt-get install chromium chromium-driver failed"; exit 1; }; \
	fi

# Two workers (pytest-xdist), each test file on one worker (its module fixtures built once), the longest files first
# (tests/conftest.py orders them); TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: env
	JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q --durations=20 \
	  -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# Trains and evaluates the demo, then scores it on 90 galleries of unseen people (docs/study_synthetic.md §3.3).
demo: env
	GLIBC_TUNABLES=$(CPU_TRAIN_MALLOC) $(PY) -m tpsearch_jax.main --config=configs/synthetic.py:demo \
	  --workdir=$${WORKDIR:-/tmp/tpsearch_synthetic}
	$(PY) -m tpsearch_jax.study.galleries --workdir=$${WORKDIR:-/tmp/tpsearch_synthetic} \
	  --pool=$${POOL:-/tmp/tpsearch_data/heldout_pool}

benchmark: env
	$(PY) -m tpsearch_jax.benchmark --out=benchmarks/latest.json

clean:
	rm -rf $(VENV)
