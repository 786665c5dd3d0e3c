# tpsearch_jax — set-up, tests and the demo. `make test` works on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: env test demo benchmark clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@PYBIN=$$(tools/find_python.sh) || exit 1; \
	  echo "using $$PYBIN"; \
	  [ -x $(PY) ] || $$PYBIN -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

env: $(VENV)/.installed

test: env
	JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests

demo: env
	$(PY) -m tpsearch_jax.main --config=configs/synthetic.py --workdir=$${WORKDIR:-/tmp/tpsearch_synthetic}

benchmark: env
	$(PY) -m tpsearch_jax.benchmark --out=benchmarks/latest.json

clean:
	rm -rf $(VENV)
