#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter: $PYTHON, then python3.13/python3.12/python3 on PATH,
# then pyenv's installed 3.12+/3.13+ versions. Exits 1 with a message when none is found.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for cand in "${PYTHON:-}" python3.12 python3 python3.13; do
  [ -n "$cand" ] || continue
  p=$(command -v "$cand" 2>/dev/null) || continue
  if ok "$p"; then echo "$p"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1 || [ -d "${PYENV_ROOT:-$HOME/.pyenv}" ]; then
  root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for p in $(ls -d "$root"/versions/3.12*/bin/python3.12 "$root"/versions/3.1[3-9]*/bin/python3.1[3-9] 2>/dev/null); do
    if ok "$p"; then echo "$p"; exit 0; fi
  done
fi
echo "error: tpsearch_jax needs Python >= 3.12 (jax >= 0.11 requires it). Set PYTHON=/path/to/python3.12," \
     "put python3.12 on PATH, or install one with pyenv ('pyenv install 3.12')." >&2
exit 1
