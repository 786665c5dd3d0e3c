"""Text-based person search in JAX: CLIP-based retrieval models, their objectives, training, evaluation and search.

The functions a user calls are importable from here and from their own modules (the same objects):

    tpsearch_jax.load_clip(path, image_size=(384, 128))     models.clip.weights: (CLIP module, params)
    tpsearch_jax.load_run(workdir, "best")                  training.runs: a trained run's config, model, params
    tpsearch_jax.read_annotations(name, root)               data.annotations: a benchmark's splits
    tpsearch_jax.retrieval_metrics(sim, q_pids, g_pids)     metrics: R@1/5/10, mAP, mINP
    tpsearch_jax.sdm_loss(...), tpsearch_jax.losses         losses, ranking_losses: every objective (``*_loss``), pure

The names load on first use, so ``import tpsearch_jax`` costs nothing and importing a submodule does not pull in the
rest of the package.
"""

from __future__ import annotations

import importlib as _importlib
import inspect as _inspect

__version__ = "0.1.0"

_EXPORTS = {
    "load_clip": "tpsearch_jax.models.clip.weights",
    "load_clip_params": "tpsearch_jax.models.clip.weights",
    "load_run": "tpsearch_jax.training.runs",
    "Run": "tpsearch_jax.training.runs",
    "read_annotations": "tpsearch_jax.data.annotations",
    "retrieval_metrics": "tpsearch_jax.metrics",
    "retrieval_metrics_from_embeddings": "tpsearch_jax.metrics",
}
_LOSSES = "tpsearch_jax.losses"
_LOSS_MODULES = (_LOSSES, "tpsearch_jax.ranking_losses")


def _loss_functions() -> dict:
  """The objectives: the public functions named ``*_loss`` of ``losses`` and ``ranking_losses``, by name."""
  out = {}
  for name in _LOSS_MODULES:
    module = _importlib.import_module(name)
    out.update({n: f for n, f in vars(module).items()
                if n.endswith("_loss") and not n.startswith("_") and _inspect.isfunction(f) and f.__module__ == name})
  return out


def __getattr__(name: str):
  if name in _EXPORTS:
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
  elif name == "losses":
    value = _importlib.import_module(_LOSSES)
  elif name.endswith("_loss") and name in _loss_functions():
    value = _loss_functions()[name]
  else:
    raise AttributeError(f"module 'tpsearch_jax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS) | {"losses"} | set(_loss_functions()))
