"""Device mesh and shardings: axes ("data", "fsdp"); batches split over both, parameters FSDP-sharded over "fsdp".

``config.mesh = {data, fsdp}`` sets the mesh shape (-1: the rest of the devices). Every batch is split over all
devices (``BATCH_AXES``); parameters and optimizer state are replicated over "data" and, when "fsdp" has more than
one device, sharded along it (FSDP over its own axis, data parallel over the rest). ``config.train.fsdp=True`` is
shorthand for ``mesh.data=1, mesh.fsdp=-1`` (every device holds a slice of every large array).

Every jitted function sees *global* arrays, so a loss over the batch (SDM, ID, triplet mining…) always sees the whole
global batch, whatever the number of devices or hosts. Devices are laid out process by process (``jax.devices()``
order, "fsdp" innermost), so process p holds one contiguous block of rows of every batch and, with
fsdp ≤ local devices, its FSDP groups stay on one host.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from tpsearch_jax.user_errors import UserError

DATA, FSDP = "data", "fsdp"
AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # the batch (leading) dimension is split over every device


def mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1, what: str = "config.mesh") -> tuple[int, int]:
  """(data, fsdp) sizes for ``num_devices``; one of them may be -1 (the rest). Raises naming ``what``'s fields."""
  sizes = {DATA: int(data), FSDP: int(fsdp)}
  for name, v in sizes.items():
    if v == 0 or v < -1:
      raise UserError(f"{what}.{name}={v}: expected a positive number of devices or -1 (the rest)")
  if sizes[DATA] == -1 and sizes[FSDP] == -1:
    raise UserError(f"{what}.data and {what}.fsdp are both -1: at most one axis takes the rest of the devices")
  for name, other in ((DATA, FSDP), (FSDP, DATA)):
    if sizes[name] == -1:
      if num_devices % sizes[other]:
        raise UserError(f"{what}.{other}={sizes[other]} does not divide the {num_devices} devices")
      sizes[name] = num_devices // sizes[other]
  if sizes[DATA] * sizes[FSDP] != num_devices:
    raise UserError(f"{what}.data × {what}.fsdp = {sizes[DATA]} × {sizes[FSDP]} = {sizes[DATA] * sizes[FSDP]} "
                     f"but there are {num_devices} devices ({jax.process_count()} processes); use -1 for one axis")
  return sizes[DATA], sizes[FSDP]


def create_mesh(devices: Sequence[jax.Device] | None = None, *, data: int = -1, fsdp: int = 1,
                what: str = "config.mesh") -> Mesh:
  """A (data, fsdp) mesh over ``devices`` (default: all devices of all processes, in process order), Auto axes."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(len(devices), data, fsdp, what)
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def run_mesh(sizes: tuple[int, int] = (-1, 1), fsdp: bool = False,
             devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The run's mesh: ``sizes`` = ``config.mesh``'s (data, fsdp) sizes, with ``fsdp`` (``config.train.fsdp``) meaning
  fsdp over every device unless ``config.mesh.fsdp`` says otherwise."""
  data, size = (int(v) for v in sizes)
  if fsdp and size == 1:
    if data not in (-1, 1):
      raise UserError(f"config.train.fsdp=True shards over every device, but config.mesh.data={data}: set "
                       "config.mesh.fsdp instead (FSDP over its axis, data parallel over config.mesh.data)")
    data, size = 1, -1
  return create_mesh(devices, data=data, fsdp=size)


def num_batch_shards(mesh: Mesh) -> int:
  """How many pieces the batch dimension is split into (the product of the batch axes present in ``mesh``)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def _batch_spec(mesh: Mesh) -> P:
  axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
  return P(axes if len(axes) > 1 else axes[0])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device ("data" × "fsdp")."""
  return NamedSharding(mesh, _batch_spec(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated."""
  return NamedSharding(mesh, P())


def param_axes(mesh: Mesh, fsdp: bool = False) -> tuple[str, ...]:
  """Mesh axes the parameters are sharded over: "fsdp" when it has > 1 device; with ``fsdp`` (the
  ``train.fsdp`` flag on a mesh without an fsdp axis) every axis of > 1 device; else none (replicated)."""
  if mesh.shape.get(FSDP, 1) > 1:
    return (FSDP,)
  if fsdp:
    return tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)
  return ()


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int, axes: str | tuple[str, ...] = DATA) -> P:
  """P with ``axes`` on the largest dimension divisible by ``num_shards``; P() for small or indivisible arrays."""
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [(d, i) for i, d in enumerate(shape) if d % num_shards == 0]
  if not candidates:
    return P()
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = axes
  return P(*spec)


def tree_shardings(mesh: Mesh, abstract_tree: Any, fsdp: bool = False, fsdp_min_size: int = 2 ** 14) -> Any:
  """NamedSharding per leaf of a tree of arrays/ShapeDtypeStructs: replicated, or FSDP over ``param_axes``."""
  axes = param_axes(mesh, fsdp)
  n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  name = axes[0] if len(axes) == 1 else axes

  def one(x):
    if not axes:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(x.shape, n, fsdp_min_size, name))

  return jax.tree.map(one, abstract_tree)


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
  """Raise if the global batch cannot be split evenly over the mesh devices and the processes."""
  n = num_batch_shards(mesh)
  if global_batch_size % n:
    raise UserError(f"{what}={global_batch_size} is not divisible by the number of devices ({n}); "
                     f"use a multiple of {n}")
  if global_batch_size % jax.process_count():
    raise UserError(f"{what}={global_batch_size} is not divisible by the number of processes "
                     f"({jax.process_count()})")


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch (this process's rows) → global jax.Arrays split over the batch axes."""
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


# ---- this process's part of a global array (evaluation: each process scores its own queries) ----------------------

def local_mesh(mesh: Mesh) -> Mesh:
  """1-D ("data",) mesh over this process's devices of ``mesh``, in the order they hold rows of a batch."""
  mine = [d for d in mesh.devices.reshape(-1) if d.process_index == jax.process_index()]
  return Mesh(np.asarray(mine), (DATA,), axis_types=(AxisType.Auto,))


def local_rows(x: jax.Array, local: Mesh) -> jax.Array:
  """Batch-sharded global ``x`` [B, ...] → this process's rows [B / processes, ...] split over ``local`` (no copy)."""
  shards = {s.device: s for s in x.addressable_shards}
  parts = [shards[d] for d in local.devices.reshape(-1)]
  starts = [p.index[0].start or 0 for p in parts]
  rows = sum(p.data.shape[0] for p in parts)
  if starts != [starts[0] + sum(p.data.shape[0] for p in parts[:i]) for i in range(len(parts))]:
    raise ValueError(f"local_rows: this process's rows of {x.shape} are not one contiguous block (starts {starts}); "
                     "build the mesh with create_mesh (devices in process order)")
  return jax.make_array_from_single_device_arrays((rows, *x.shape[1:]), NamedSharding(local, P(DATA)),
                                                  [p.data for p in parts])


def local_copy(x: jax.Array, local: Mesh) -> jax.Array:
  """Replicated global ``x`` → the same array replicated over ``local`` (this process's copies, no transfer)."""
  shards = {s.device: s.data for s in x.addressable_shards}
  return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(local, P()),
                                                  [shards[d] for d in local.devices.reshape(-1)])
