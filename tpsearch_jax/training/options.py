"""A run's config read once into typed, frozen options: what the library functions take instead of the ConfigDict.

``run_options(config)`` turns a resolved config (``config_checks.resolve_config``, ``model.num_classes`` filled
from the data) into ``Options``: the method (``models.MethodOptions``: CLIP architecture, model, loss), the data
section the pipelines and tokenizers read, the optimizer and schedule sections, the mesh sizes and the parameter
sharding. The setup object (``training/setup.py``) builds it once and passes each function the part it needs; a
loaded run (``training/runs.Run``) carries its own.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from tpsearch_jax.batch import BatchOptions
from tpsearch_jax.models import MethodOptions, method_options


@dataclasses.dataclass(frozen=True)
class Options(MethodOptions):
  """``MethodOptions`` (clip, model, loss) + data: frozen ``config.data``; optim / schedule: frozen
  ``config.optim`` / ``config.schedule`` (``training.optim`` reads them); mesh_sizes: ``config.mesh``'s (data,
  fsdp) sizes (``sharding.run_mesh``); fsdp, fsdp_min_size: ``config.train``'s parameter sharding."""

  data: ml_collections.FrozenConfigDict
  optim: ml_collections.FrozenConfigDict
  schedule: ml_collections.FrozenConfigDict
  mesh_sizes: tuple[int, int]
  fsdp: bool
  fsdp_min_size: int

  @property
  def batch_options(self) -> BatchOptions:
    """What this run's train batches look like (``batch.fake_train_batch`` takes it)."""
    bert = self.model.backbone != "clip"  # the paper backbones read BERT word pieces
    return BatchOptions(tuple(int(v) for v in self.data.image_size), int(self.data.context_length),
                        self.model.num_classes, self.model.bert.vocab_size if bert else None)


def run_options(config: ml_collections.ConfigDict) -> Options:
  """Resolved config → ``Options`` (the method options checked: ``models.method_options``)."""
  method = method_options(config)
  mesh = config.get("mesh") or {}  # configs written before config.mesh: data parallel
  return Options(clip=method.clip, model=method.model, loss=method.loss,
                 data=ml_collections.FrozenConfigDict(config.data),
                 optim=ml_collections.FrozenConfigDict(config.optim),
                 schedule=ml_collections.FrozenConfigDict(config.schedule),
                 mesh_sizes=(int(mesh.get("data", -1)), int(mesh.get("fsdp", 1))),
                 fsdp=bool(config.train.fsdp), fsdp_min_size=int(config.train.fsdp_min_size))
