"""Device mesh and shardings: one "data" axis; batches split along it, parameters replicated or FSDP-sharded.

Every jitted function sees *global* arrays, so a loss over the batch (SDM, ID, triplet mining…) always sees the whole
global batch, whatever the number of devices or hosts.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh ("data",) over ``devices`` (default: all devices of all processes), with Auto axis types."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over "data"."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated."""
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int) -> P:
  """P with "data" on the largest dimension divisible by ``num_shards``; P() for small or indivisible arrays."""
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [(d, i) for i, d in enumerate(shape) if d % num_shards == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = DATA
  return P(*spec)


def tree_shardings(mesh: Mesh, abstract_tree: Any, fsdp: bool = False, fsdp_min_size: int = 2 ** 14) -> Any:
  """NamedSharding per leaf of a tree of arrays/ShapeDtypeStructs: replicated, or FSDP along "data"."""
  n = mesh.shape[DATA]

  def one(x):
    if not fsdp:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(x.shape, n, fsdp_min_size))

  return jax.tree.map(one, abstract_tree)


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
  """Raise if the global batch cannot be split evenly over the mesh devices and the processes."""
  n = mesh.shape[DATA]
  if global_batch_size % n:
    raise ValueError(f"{what}={global_batch_size} is not divisible by the number of devices ({n}); "
                     f"use a multiple of {n}")
  if global_batch_size % jax.process_count():
    raise ValueError(f"{what}={global_batch_size} is not divisible by the number of processes "
                     f"({jax.process_count()})")


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch (this process's rows) → global jax.Arrays split along "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def prefetch_to_mesh(iterator, mesh: Mesh, size: int = 2):
  """Wrap an iterator of local numpy batches; yields global sharded batches, ``size`` transfers ahead."""
  queue = collections.deque()

  def enqueue(n):
    for _ in range(n):
      try:
        queue.append(to_global(next(iterator), mesh))
      except StopIteration:
        return

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
