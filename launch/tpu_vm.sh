#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: installs the project on every worker and starts one process per host.
# JAX discovers the other hosts of the slice by itself (jax.distributed.initialize() with no arguments).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b REPO=https://example.org/you/tpsearch_jax.git \
#   launch/tpu_vm.sh --config=configs/cuhk.py:fmfa --workdir=gs://bucket/runs/cuhk_fmfa \
#       --config.data.root=/mnt/data/CUHK-PEDES --config.init.clip=/mnt/weights/clip-vit-base-patch16
#
# Data: every host needs the dataset folder (or a TFDS data_dir on GCS, --config.data.use_tfds=True).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO:?set REPO (git URL of this project)}"
BRANCH=${BRANCH:-main}
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
  set -e
  if [ ! -d tpsearch_jax ]; then git clone --branch $BRANCH $REPO tpsearch_jax; fi
  cd tpsearch_jax && git pull --ff-only
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' && .venv/bin/pip install -q --no-deps -e .
  TPSEARCH_DISTRIBUTED=1 nohup .venv/bin/python -m tpsearch_jax.main $ARGS > train_\$(hostname).log 2>&1 &
"
echo "started on all workers of $TPU_NAME; logs: ~/tpsearch_jax/train_<host>.log on each worker"
