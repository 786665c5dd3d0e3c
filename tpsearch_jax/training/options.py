"""A run's config read once into typed, frozen options: what the library functions take instead of the ConfigDict.

``run_options(config)`` turns a resolved config (``config_checks.resolve_config``, ``model.num_classes`` filled
from the data) into ``Options``: the method (``models.MethodOptions``: CLIP architecture, model, loss), the data
section the pipelines and tokenizers read, the optimizer and schedule sections, and the parameter sharding. The
setup object (``training/setup.py``) builds it once and passes each function the part it needs.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from tpsearch_jax.models import MethodOptions, method_options


@dataclasses.dataclass(frozen=True)
class Options(MethodOptions):
  """``MethodOptions`` (clip, model, loss) + data: frozen ``config.data``; optim / schedule: frozen
  ``config.optim`` / ``config.schedule`` (``training.optim`` reads them); fsdp, fsdp_min_size: ``config.train``'s
  parameter sharding."""

  data: ml_collections.FrozenConfigDict
  optim: ml_collections.FrozenConfigDict
  schedule: ml_collections.FrozenConfigDict
  fsdp: bool
  fsdp_min_size: int


def run_options(config: ml_collections.ConfigDict) -> Options:
  """Resolved config → ``Options`` (the method options checked: ``models.method_options``)."""
  method = method_options(config)
  return Options(clip=method.clip, model=method.model, loss=method.loss,
                 data=ml_collections.FrozenConfigDict(config.data),
                 optim=ml_collections.FrozenConfigDict(config.optim),
                 schedule=ml_collections.FrozenConfigDict(config.schedule),
                 fsdp=bool(config.train.fsdp), fsdp_min_size=int(config.train.fsdp_min_size))
