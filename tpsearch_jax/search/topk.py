"""Exact (or TPU-approximate) brute-force top-k over L2-normalised vectors sharded over devices (``ShardedVectors``).

The rows are split evenly over a 1-D mesh axis. Each device scans its rows in fixed-size blocks (one
[Q, block] score matrix at a time), keeps a running top-k, and the per-device top-k lists are all-gathered and merged
into the global top-k. Padding rows carry id -1 and score -inf, so they are only returned when k exceeds the number of
real rows.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from tpsearch_jax import sharding as shd

__all__ = ["AXIS", "ShardedVectors", "shard_vectors", "default_mesh", "l2_normalize", "search", "search_batched"]

AXIS = shd.DATA


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ShardedVectors:
  """embeddings [N_pad, D] (L2-normalised, row-sharded), ids int32 [N_pad] (-1 = padding); N real rows."""

  embeddings: jax.Array
  ids: jax.Array
  num_rows: int = dataclasses.field(metadata=dict(static=True))
  block_size: int = dataclasses.field(metadata=dict(static=True))
  mesh: Mesh = dataclasses.field(metadata=dict(static=True))


def default_mesh() -> Mesh:
  """The 1-D ``data`` mesh over every device (``sharding.create_mesh``)."""
  return shd.create_mesh()


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows divided by their L2 norm (computed in float32). [N, D] → [N, D]."""
  x32 = x.astype(jnp.float32)
  return (x32 / jnp.maximum(jnp.linalg.norm(x32, axis=-1, keepdims=True), eps)).astype(x.dtype)


def shard_vectors(embeddings, ids, *, mesh: Mesh | None = None, block_size: int = 65536,
                  dtype=jnp.bfloat16, normalize: bool = True) -> ShardedVectors:
  """embeddings [N, D] (numpy or jax), ids int [N] (non-negative) → a ``ShardedVectors`` sharded over ``mesh``.

  Rows are L2-normalised (unless ``normalize=False``), cast to ``dtype`` and padded to a multiple of
  (devices × block) where block = min(block_size, rows per device).
  """
  mesh = default_mesh() if mesh is None else mesh
  embeddings = np.asarray(embeddings) if not isinstance(embeddings, jax.Array) else embeddings
  ids = np.asarray(ids)
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
  if ids.shape != (embeddings.shape[0],):
    raise ValueError(f"ids must be [N] with N = {embeddings.shape[0]} (rows of embeddings), got shape {ids.shape}")
  if ids.size and ids.min() < 0:
    raise ValueError("ids must be non-negative (-1 marks padding rows)")
  n, _ = embeddings.shape
  if n == 0:
    raise ValueError("cannot shard zero embeddings")
  shards = mesh.shape[AXIS]
  per_shard = -(-n // shards)
  block = max(1, min(block_size, per_shard))
  per_shard = -(-per_shard // block) * block
  pad = shards * per_shard - n
  sharding = shd.batch_sharding(mesh)
  emb = jnp.asarray(embeddings)
  if normalize:
    emb = l2_normalize(emb.astype(jnp.float32))
  emb = jnp.pad(emb.astype(dtype), ((0, pad), (0, 0)))
  padded_ids = np.concatenate([ids.astype(np.int32), np.full((pad,), -1, np.int32)])
  return ShardedVectors(embeddings=jax.device_put(emb, sharding), ids=jax.device_put(padded_ids, sharding),
                        num_rows=n, block_size=block, mesh=mesh)


def _merge(scores_a, ids_a, scores_b, ids_b, k: int):
  """Top-k of the union of two candidate lists. [Q, ka], [Q, kb] → ([Q, k], [Q, k])."""
  scores = jnp.concatenate([scores_a, scores_b], axis=-1)
  cand = jnp.concatenate([ids_a, ids_b], axis=-1)
  top, idx = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(cand, idx, axis=-1)


def _local_topk(queries, emb, ids, *, k: int, block: int, approximate: bool, recall_target: float):
  """Running top-k over this device's rows, scanned ``block`` rows at a time. → ([Q, k] f32, [Q, k] int32)."""
  q = queries.shape[0]
  emb_blocks = emb.reshape(-1, block, emb.shape[-1])
  id_blocks = ids.reshape(-1, block)
  kb = min(k, block)

  def step(carry, xs):
    best_s, best_i = carry
    e, i = xs
    s = jnp.einsum("qd,nd->qn", queries.astype(e.dtype), e, preferred_element_type=jnp.float32)
    s = jnp.where(i[None, :] >= 0, s, -jnp.inf)
    if approximate:
      top, idx = jax.lax.approx_max_k(s, kb, recall_target=recall_target)
    else:
      top, idx = jax.lax.top_k(s, kb)
    return _merge(best_s, best_i, top, i[idx], k), None

  init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
  init = jax.lax.pcast(init, AXIS, to="varying")  # the carry differs per device, like the scanned rows
  (best_s, best_i), _ = jax.lax.scan(step, init, (emb_blocks, id_blocks))
  return best_s, best_i


@functools.partial(jax.jit, static_argnames=("k", "approximate", "recall_target", "normalize"))
def search(vectors: ShardedVectors, queries: jax.Array, k: int, approximate: bool = False,
           recall_target: float = 0.95, normalize: bool = True) -> tuple[jax.Array, jax.Array]:
  """queries [Q, D] → (cosine scores float32 [Q, k] descending, ids int32 [Q, k]) over every row.

  Exact by default (``jax.lax.top_k`` per block); ``approximate=True`` uses ``jax.lax.approx_max_k`` per block, which
  is fast on TPU and falls back to an exact top-k elsewhere.
  """
  if queries.ndim != 2 or queries.shape[1] != vectors.embeddings.shape[1]:
    raise ValueError(f"queries must be [Q, {vectors.embeddings.shape[1]}], got shape {queries.shape}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if normalize:
    queries = l2_normalize(queries.astype(jnp.float32))

  def per_shard(q, emb, ids):
    s, i = _local_topk(q, emb, ids, k=k, block=vectors.block_size, approximate=approximate,
                       recall_target=recall_target)
    all_s = jax.lax.all_gather(s, AXIS, axis=1, tiled=True, to="invarying")  # [Q, shards·k]
    all_i = jax.lax.all_gather(i, AXIS, axis=1, tiled=True, to="invarying")
    top, idx = jax.lax.top_k(all_s, k)
    return top, jnp.take_along_axis(all_i, idx, axis=-1)

  fn = jax.shard_map(per_shard, mesh=vectors.mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P()))
  return fn(queries, vectors.embeddings, vectors.ids)


def search_batched(vectors: ShardedVectors, queries, k: int, query_batch: int = 1024,
                   **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """Like ``search`` over many queries [Q, D], ``query_batch`` at a time (last batch padded) → numpy [Q, k] ×2."""
  queries = np.asarray(queries)
  scores, ids = [], []
  for start in range(0, queries.shape[0], query_batch):
    chunk = queries[start:start + query_batch]
    n = chunk.shape[0]
    if n < query_batch:
      chunk = np.concatenate([chunk, np.ones((query_batch - n, chunk.shape[1]), chunk.dtype)])
    s, i = search(vectors, jnp.asarray(chunk), k, **kwargs)
    scores.append(np.asarray(s)[:n])
    ids.append(np.asarray(i)[:n])
  return np.concatenate(scores), np.concatenate(ids)
