#!/usr/bin/env bash
# One machine, any number of GPUs: a single process drives them all (the batch is split over every device of the
# mesh; config.mesh sets the data × fsdp layout). Rerun the same command to resume from --workdir.
#
#   launch/gpu_single_host.sh --config=configs/cuhk.py:fmfa --workdir=runs/cuhk_fmfa --config.data.root=/data/CUHK-PEDES
#   GPUS=0,1,2,3 launch/gpu_single_host.sh ...   # a subset of the GPUs
#   launch/gpu_single_host.sh --dry-run ARGS...  # prints the command, runs nothing
set -euo pipefail

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
cd "$(dirname "$0")/.."
ENV=(XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}")
if [ -n "${GPUS:-}" ]; then ENV+=(CUDA_VISIBLE_DEVICES="$GPUS"); fi
CMD=(env "${ENV[@]}" .venv/bin/python -m tpsearch_jax.main "${ARGS[@]}")

if [ "$DRY_RUN" = 1 ]; then
  echo "# in $PWD:"
  printf '%q ' "${CMD[@]}"
  printf '\n'
  exit 0
fi
[ -x .venv/bin/python ] || { echo "run 'make env' first (then: .venv/bin/pip install -U 'jax[cuda12]')" >&2; exit 1; }
exec "${CMD[@]}"
