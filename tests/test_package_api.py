"""The functions users call are importable from the package root and are the objects of their real modules."""

from __future__ import annotations

import os
import subprocess
import sys

import tpsearch_jax
from tpsearch_jax import losses, metrics, ranking_losses
from tpsearch_jax.data import annotations
from tpsearch_jax.models.clip import weights
from tpsearch_jax.training import runs


def test_root_names_are_the_real_modules_objects():
  assert tpsearch_jax.load_clip is weights.load_clip and tpsearch_jax.load_run is runs.load_run
  assert tpsearch_jax.read_annotations is annotations.read_annotations
  assert tpsearch_jax.retrieval_metrics is metrics.retrieval_metrics and tpsearch_jax.losses is losses
  assert tpsearch_jax.sdm_loss is losses.sdm_loss and tpsearch_jax.cmr_ranking_loss is ranking_losses.cmr_ranking_loss
  names = dir(tpsearch_jax)
  assert {"efa_loss", "id_loss", "load_run", "retrieval_metrics"} <= set(names)


def test_importing_the_package_loads_nothing_heavy():
  code = "import sys, tpsearch_jax; print(sorted(m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]"
