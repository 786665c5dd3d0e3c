#!/usr/bin/env bash
# Train on a Cloud TPU VM slice, one process per host: create (or reuse) the slice, install the project on every
# worker, run the same command on --worker=all, and after a preemption recreate the slice and rerun it, which resumes
# from the checkpoints in the bucket. Work directory and TFDS records live on a GCS bucket. See launch/README.md.
#
#   TPU_NAME=tps-v5e-16 ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 BUCKET=gs://my-bucket \
#   REPO=https://github.com/you/tpsearch_jax.git DATA_GCS=gs://my-bucket/data/CUHK-PEDES \
#   FILES_GCS=gs://my-bucket/weights launch/tpu_vm.sh [--dry-run] --config=configs/cuhk.py:fmfa \
#       --config.init.clip=files/clip_b16_384x128.msgpack
#
# --dry-run prints every gcloud command (and the remote scripts) without running anything.
set -euo pipefail

usage() {
  sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'
  cat <<'EOF'

Required: TPU_NAME, ZONE, ACCELERATOR_TYPE, BUCKET (gs://...), REPO (git URL of this project).
Optional: PROJECT, RUNTIME_VERSION (tpu-ubuntu2204-base), SPOT=1 (spot VMs), BRANCH (main), RUN_NAME ($TPU_NAME),
  WORKDIR ($BUCKET/runs/$RUN_NAME), TFDS_DIR ($BUCKET/tfds), DATA_GCS (gs:// folder with the dataset's annotation
  JSON; copied to ~/tpsearch_data/<name> on every worker and used as --config.data.root), FILES_GCS (gs:// folder
  copied to ~/tpsearch_jax/files/ on every worker, the run's working directory: --config.init.clip=files/NAME),
  MAX_ATTEMPTS (20),
  DRY_RUN_TPU_STATE (the slice state a dry run assumes: MISSING, READY or PREEMPTED).
EOF
}

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) ARGS+=("$arg") ;;
  esac
done

: "${TPU_NAME:?set TPU_NAME (the slice to create or reuse); see --help}"
: "${ZONE:?set ZONE, e.g. us-west4-a}"
: "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE, e.g. v5litepod-16 or v4-32}"
: "${BUCKET:?set BUCKET, e.g. gs://my-bucket (work directory and TFDS records)}"
: "${REPO:?set REPO (git URL of this project)}"
case "$BUCKET" in gs://*) ;; *) echo "BUCKET must be a gs:// URL, got $BUCKET" >&2; exit 2 ;; esac
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
BRANCH=${BRANCH:-main}
RUN_NAME=${RUN_NAME:-$TPU_NAME}
WORKDIR=${WORKDIR:-$BUCKET/runs/$RUN_NAME}
TFDS_DIR=${TFDS_DIR:-$BUCKET/tfds}
DATA_GCS=${DATA_GCS:-}
MAX_ATTEMPTS=${MAX_ATTEMPTS:-20}
REMOTE_DIR=tpsearch_jax  # in the home directory of every worker

TPU=(gcloud compute tpus tpu-vm)
if [ -n "${PROJECT:-}" ]; then TPU+=(--project="$PROJECT"); fi

show() {  # print a command, shell-quoted, as it would be typed
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

run() {  # print, then run unless --dry-run
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

slice_state() {  # READY, CREATING, PREEMPTED, ... or MISSING
  if [ "$DRY_RUN" = 1 ]; then
    echo "${DRY_RUN_TPU_STATE:-MISSING}"
    return
  fi
  "${TPU[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)' 2>/dev/null || echo MISSING
}

create_slice() {
  local spot=()
  if [ "${SPOT:-0}" = 1 ]; then spot=(--spot); fi
  run "${TPU[@]}" create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" "${spot[@]}"
}

ensure_slice() {  # a READY slice named $TPU_NAME: reused, created, or recreated after a preemption
  local state waited=0
  show "${TPU[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)'
  state=$(slice_state)
  while :; do
    case "$state" in
      READY) echo "slice $TPU_NAME is READY"; return ;;
      MISSING) echo "slice $TPU_NAME does not exist: creating it"; create_slice; return ;;
      PREEMPTED | TERMINATED | STOPPED | SUSPENDED)
        echo "slice $TPU_NAME is $state: deleting and recreating it"
        run "${TPU[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet
        create_slice
        return ;;
      CREATING | STARTING | RESTARTING | REPAIRING | PROVISIONING)
        if [ "$waited" -ge 1800 ]; then echo "slice $TPU_NAME still $state after 30 min" >&2; exit 1; fi
        echo "slice $TPU_NAME is $state: waiting"; sleep 30; waited=$((waited + 30)); state=$(slice_state) ;;
      *) echo "slice $TPU_NAME is in state $state: fix it (or delete it) and rerun" >&2; exit 1 ;;
    esac
  done
}

# Remote scripts (bash on every worker). Values are quoted here; $HOME and $(hostname) expand on the worker.
DATA_NAME=$(basename "${DATA_GCS:-none}")
INSTALL="set -euo pipefail
if [ ! -d $REMOTE_DIR/.git ]; then git clone --quiet $(printf %q "$REPO") $REMOTE_DIR; fi
cd $REMOTE_DIR && git fetch --quiet origin $(printf %q "$BRANCH") && git checkout --quiet FETCH_HEAD
if ! command -v make >/dev/null 2>&1; then sudo apt-get -qq update && sudo apt-get -qq install -y make; fi
if ! tools/find_python.sh >/dev/null 2>&1; then  # the runtime image may predate Python 3.12
  command -v uv >/dev/null 2>&1 || curl -LsSf https://astral.sh/uv/install.sh | sh
  \"\$HOME/.local/bin/uv\" python install 3.12
  export PYTHON=\$(\"\$HOME/.local/bin/uv\" python find 3.12)
fi
make env  # the README's install: .venv with requirements.txt and the package
.venv/bin/pip install --quiet 'jax[tpu]>=0.11,<0.13'"
if [ -n "${FILES_GCS:-}" ]; then
  INSTALL="$INSTALL
mkdir -p files && gcloud storage cp --recursive $(printf %q "$FILES_GCS")/'*' files/  # e.g. pretrained weights"
fi
MAIN_ARGS=(--workdir="$WORKDIR" --config.data.use_tfds=True --config.data.tfds_data_dir="$TFDS_DIR")
if [ -n "$DATA_GCS" ]; then
  INSTALL="$INSTALL
mkdir -p \"\$HOME/tpsearch_data/$DATA_NAME/imgs\"  # the annotation JSON is read from here, the images from TFDS
gcloud storage cp $(printf %q "$DATA_GCS")/'*.json' \"\$HOME/tpsearch_data/$DATA_NAME/\""
  MAIN_ARGS+=(--config.data.root="~/tpsearch_data/$DATA_NAME")
fi
QUOTED_ARGS=$(printf '%q ' "${MAIN_ARGS[@]}" "${ARGS[@]}")
TRAIN="set -o pipefail
cd $REMOTE_DIR && TPSEARCH_DISTRIBUTED=1 .venv/bin/python -m tpsearch_jax.main ${QUOTED_ARGS}2>&1 \
| tee -a \"\$HOME/train_\$(hostname).log\""

on_all_workers() {
  run "${TPU[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
  if [ "$DRY_RUN" = 1 ]; then printf '  | %s\n' "${1//$'\n'/$'\n'  | }"; fi  # the remote script, readable
}

for attempt in $(seq 1 "$MAX_ATTEMPTS"); do
  echo "== attempt $attempt of $MAX_ATTEMPTS: $WORKDIR"
  ensure_slice
  on_all_workers "$INSTALL"
  rc=0
  on_all_workers "$TRAIN" || rc=$?
  if [ "$DRY_RUN" = 1 ]; then
    echo "(dry run: nothing was run; after a preemption the loop recreates the slice and runs the same command," \
      "which resumes from $WORKDIR)"
    exit 0
  fi
  if [ "$rc" = 0 ]; then echo "done: $WORKDIR/results.json"; exit 0; fi
  state=$(slice_state)
  if [ "$state" = READY ] && [ "$rc" != 143 ]; then
    echo "training failed (exit $rc) on a healthy slice; see ~/train_<host>.log on the workers" >&2
    exit "$rc"
  fi
  echo "slice $state after exit $rc (preempted): resuming from $WORKDIR"
done
echo "gave up after $MAX_ATTEMPTS attempts" >&2
exit 1
