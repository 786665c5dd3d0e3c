#!/usr/bin/env bash
# One-command accelerator check: the full-size benchmark on one GPU (or TPU), written as JSON + a Markdown table.
#
#   benchmarks/accelerator_check.sh [--preset=full|ci] [--out=DIR] [--python=PY] [--dry-run]
#
# full (default): CLIP ViT-B/16 @ 384x128, text 77, batch 128, bfloat16, for irra, fmfa, pcc, combined: step time,
# samples/s, MFU, peak memory, with cuDNN attention where available; then irra with XLA attention, with remat, and
# with the full MLM head; CUHK-PEDES- and ICFG-PEDES-size test evaluations (time, peak memory); metrics and search.
# Budget: about 8 minutes on one H100/H200. ci: the same steps with the tiny model on CPU (what the test suite runs).
# Installs the accelerator jax wheel when jax sees only the CPU but a GPU/TPU is present (needs a package index).
set -euo pipefail

PRESET=full
OUT=benchmarks/accelerator
PY=${PYTHON:-.venv/bin/python}
DRY=0
for arg in "$@"; do
  case "$arg" in
    --preset=*) PRESET=${arg#*=} ;;
    --out=*) OUT=${arg#*=} ;;
    --python=*) PY=${arg#*=} ;;
    --dry-run) DRY=1 ;;
    *) echo "accelerator_check.sh: unknown argument $arg (see the header of $0)" >&2; exit 2 ;;
  esac
done
case "$PRESET" in
  full) METHODS=irra,fmfa,pcc,combined; ONE=irra; MAIN_LIMIT=270; LIMIT=70; DTYPE=bfloat16 ;;
  ci) METHODS=clip; ONE=clip; MAIN_LIMIT=300; LIMIT=200; DTYPE=float32 ;;
  *) echo "accelerator_check.sh: --preset must be full or ci, got $PRESET" >&2; exit 2 ;;
esac

run() {  # run NAME SECONDS ARGS...: one benchmark process (killed after SECONDS) writing OUT/NAME.json and .md
  local name=$1 seconds=$2
  shift 2
  local cmd=(timeout "$seconds" "$PY" -m tpsearch_jax.benchmark "--preset=$PRESET" "--dtype=$DTYPE"
             "--out=$OUT/$name.json" "--markdown=$OUT/$name.md" "$@")
  echo "+ ${cmd[*]}"
  if [[ $DRY == 0 ]]; then
    "${cmd[@]}"
  fi
}

if [[ $PRESET == full && $DRY == 0 ]]; then
  backend=$("$PY" -c 'import jax; print(jax.default_backend())')
  if [[ $backend == cpu ]]; then
    if command -v nvidia-smi > /dev/null; then
      "$PY" -m pip install --quiet --upgrade "jax[cuda12]"
    elif [[ -e /dev/accel0 || -e /dev/vfio/0 ]]; then
      "$PY" -m pip install --quiet --upgrade "jax[tpu]"
    fi
    backend=$("$PY" -c 'import jax; print(jax.default_backend())')
  fi
  if [[ $backend == cpu ]]; then
    echo "accelerator_check.sh: jax sees no accelerator on this machine; use --preset=ci for the CPU path" >&2
    exit 1
  fi
fi

[[ $DRY == 1 ]] || mkdir -p "$OUT"
run main "$MAIN_LIMIT" "--methods=$METHODS" --attention=auto
run xla_attention "$LIMIT" "--methods=$ONE" --attention=xla --skip=eval,metrics,search
run remat "$LIMIT" "--methods=$ONE" --remat --skip=eval,metrics,search
run full_mlm_head "$LIMIT" "--methods=$ONE" --mlm_head=full --skip=eval,metrics,search
if [[ $DRY == 0 ]]; then
  "$PY" benchmarks/accelerator_summary.py "$OUT"/main.json "$OUT"/xla_attention.json "$OUT"/remat.json \
      "$OUT"/full_mlm_head.json > "$OUT/summary.md"
  cat "$OUT/summary.md"
fi
