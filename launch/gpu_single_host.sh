#!/usr/bin/env bash
# One machine, any number of GPUs: a single process drives them all (the batch is sharded over a "data" mesh axis).
#   launch/gpu_single_host.sh --config=configs/cuhk.py:fmfa --workdir=runs/cuhk_fmfa --config.data.root=/data/CUHK-PEDES
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run 'make env' first (then: .venv/bin/pip install -U 'jax[cuda12]')" >&2; exit 1; }
exec .venv/bin/python -m tpsearch_jax.main "$@"
