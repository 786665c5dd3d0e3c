"""Exact text→image retrieval metrics (R@1/5/10, mAP, mINP) without sorting the gallery.

Definitions follow the IRRA evaluator: positives of a query are ALL gallery items with its person id; R@K = 1 if a
positive is in the top K; AP = (1/n) Σ_k k / r_(k) over the positives' ranks r_(1) < … < r_(n); INP = n / r_(n).
Values are percentages averaged over the queries that have at least one positive, returned as Python floats.

Algorithm (no G-length sort, no G-length index arrays): the gallery indices of each identity are tabulated once on the
host ([#ids, K], K = largest positive count rounded up to a multiple of 8). A query gathers its n ≤ K positive
scores, sorts only those, and for each counts the gallery scores above it with one fused compare-and-sum pass; the
k-th positive's rank is (#negatives ranked before it) + k. Queries are processed in blocks of b, ordered by
decreasing n (per shard), so a block loops over about as many positives as its queries have. Ties:
``ties="optimistic"`` (default) ranks a negative before a positive only when its score is strictly greater;
``"pessimistic"`` also when equal. Tied positives take consecutive ranks in both, so AP ≤ 1 always. Both agree with
an argsort evaluator whenever scores are distinct.

Scaling (Q queries, G gallery items, n̄ mean positives, D dims, block b): time O(Q·G·n̄) comparisons (+ O(Q·G·D) for
the embedding variant's matmul); device memory O(b·G) per block on top of the inputs, plus the [#ids, K] table
(int32; mind it when one identity has very many gallery items). The five per-query numbers come back to the host,
which averages them in float64, so results do not depend on b or on the sharding.
ICFG-PEDES test (19,848²): the matrix is 1.6 GB in float32 and a 256-query block another 20 MB, well inside 16 GB;
retrieval_metrics_from_embeddings needs only the two embedding tables (≈ 40 MB each at D = 512). For 100k × 1M on a
pod, shard the queries (NamedSharding over the query axis): each device holds the replicated 1M × 512 gallery
(2 GB in float32) plus one block (b·G·4 bytes, 1 GB at b = 256; lower block_size on small-memory chips) and
computes its queries independently; Q·G·n̄ = 1e11·n̄ comparisons split over the devices.
Image→text retrieval: pass similarity.T with the pids swapped. The public functions run on the host (pids are
read as numpy, results are Python floats) and call jitted device code; they are not meant to be traced themselves.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

_LOG = logging.getLogger(__name__)
_TIES = ("optimistic", "pessimistic")
_CPU_MATRIX_BLOCK = 16  # small blocks of a precomputed matrix stay in the CPU cache during the compare passes
_BLOCK = 256  # accelerators, and the embedding variant everywhere (its matmul wants wide blocks)


def _positive_table(query_pids, gallery_pids):
  """Host-side positives: (slot int32 [Q], table int32 [U+1, K], counts int32 [U+1]); slot U = no positive."""
  qp = np.asarray(query_pids).reshape(-1)
  gp = np.asarray(gallery_pids).reshape(-1)
  uniq, inverse, counts = np.unique(gp, return_inverse=True, return_counts=True)
  k = max(8, -(-int(counts.max()) // 8) * 8) if gp.size else 8
  table = np.zeros((len(uniq) + 1, k), np.int32)
  order = np.argsort(inverse, kind="stable")  # gallery indices grouped by identity
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  ids = inverse[order]
  table[ids, np.arange(gp.size) - starts[ids]] = order
  counts = np.concatenate([counts, [0]]).astype(np.int32)
  pos = np.clip(np.searchsorted(uniq, qp), 0, max(len(uniq) - 1, 0))
  found = uniq[pos] == qp if len(uniq) else np.zeros(qp.shape, bool)
  slot = np.where(found, pos, len(uniq)).astype(np.int32)
  return slot, table, counts


def _block_stats(sim, slot, table, counts, ties):
  """Per-query stats of one block. sim [b, G], slot [b] -> (first rank, last rank, n positives, AP, #non-finite)."""
  sim = sim.astype(jnp.float32)
  k = table.shape[1]
  kk = jnp.arange(k)
  n = counts[slot]
  valid = kk[None, :] < n[:, None]
  pos = jnp.take_along_axis(sim, table[slot], axis=1)
  pos = -jnp.sort(-jnp.where(valid, pos, -jnp.inf), axis=1)  # descending; padding last
  before = jnp.greater if ties == "optimistic" else jnp.greater_equal

  def count(j, acc):  # one fused compare-and-sum pass over the gallery per positive index (no [b, G, K] array)
    above = jnp.sum(before(sim, jax.lax.dynamic_slice_in_dim(pos, j, 1, axis=1)), axis=1, dtype=jnp.int32)
    return jax.lax.dynamic_update_slice_in_dim(acc, above[:, None], j, axis=1)

  all_before = jax.lax.fori_loop(0, jnp.max(n), count, jnp.zeros(pos.shape, jnp.int32))
  side = "left" if ties == "optimistic" else "right"  # positives strictly above / at or above each positive
  pos_before = jax.vmap(functools.partial(jnp.searchsorted, side=side))(-pos, -pos)
  rank = jnp.where(valid, all_before - pos_before + kk[None, :] + 1, 1)  # negatives before it + its place among n
  last = jnp.take_along_axis(rank, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
  ap = jnp.sum(jnp.where(valid, (kk[None, :] + 1) / rank, 0.0), axis=1) / jnp.maximum(n, 1)
  bad = jnp.sum(~jnp.isfinite(sim), axis=1)
  return rank[:, 0], last, n, ap, bad


def _blocked(block_fn, order, block):
  """Runs block_fn(rows) over ceil(q/b) blocks of ``order`` (last one clamped); stitches [q]-long outputs whose
  position p holds query order[p]."""
  q = order.shape[0]
  b = min(block, q)
  nb = -(-q // b)
  starts = jnp.minimum(jnp.arange(nb) * b, q - b)
  outs = jax.lax.map(lambda s: block_fn(jax.lax.dynamic_slice_in_dim(order, s, b)), starts)
  skip = (nb - 1) * b - (q - b)  # rows of the clamped last block already produced by the previous one
  return tuple(jnp.concatenate([o[:-1].reshape(-1), o[-1, skip:]]) for o in outs)


def _local_from_matrix(sim, slot, order, table, counts, *, block, ties):
  return _blocked(lambda rows: _block_stats(sim[rows], slot[rows], table, counts, ties), order, block)


def _local_from_embeddings(q_emb, g_emb, slot, order, table, counts, *, block, ties):
  g = g_emb.astype(jnp.float32)

  def one(rows):
    sim = jnp.matmul(q_emb[rows].astype(jnp.float32), g.T, precision=jax.lax.Precision.HIGHEST)
    return _block_stats(sim, slot[rows], table, counts, ties)

  return _blocked(one, order, block)


@functools.lru_cache(maxsize=32)
def _compiled(kind, block, ties, mesh=None, axis=None):
  """jit of the local computation; with a mesh, wrapped in shard_map over the query axis (gallery replicated)."""
  fn = functools.partial(_local_from_matrix if kind == "matrix" else _local_from_embeddings, block=block, ties=ties)
  if mesh is None:
    return jax.jit(fn)
  per_query = (P(axis, None), P(axis), P(axis))
  in_specs = per_query + (P(), P()) if kind == "matrix" else per_query[:1] + (P(),) + per_query[1:] + (P(), P())
  # No collectives inside: every device works on its own queries, so the varying-axis check is not needed.
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=(P(axis),) * 5, check_vma=False))


def _query_sharding(x):
  """(mesh, axis spec, #query shards) for a jax.Array whose NamedSharding splits axis 0, else (None, None, 1)."""
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, NamedSharding) and len(sharding.spec) > 0 and sharding.spec[0] is not None:
    axis = sharding.spec[0]
    names = axis if isinstance(axis, tuple) else (axis,)
    return sharding.mesh, axis, int(np.prod([sharding.mesh.shape[a] for a in names]))
  return None, None, 1


def _prepare(query_pids, gallery_pids, query_like):
  """Host-side inputs: slot, per-shard order (queries by decreasing #positives, so a block's loop bound is tight),
  the global query index of each output position, table, counts, mesh, axis."""
  slot, table, counts = _positive_table(query_pids, gallery_pids)
  mesh, axis, shards = _query_sharding(query_like)
  q = slot.shape[0]
  if q % shards:
    raise ValueError(f"retrieval metrics: {q} queries do not split evenly over {shards} shards")
  local = q // shards
  n = counts[slot].reshape(shards, local)
  order = np.argsort(-n, axis=1, kind="stable").astype(np.int32)
  query_index = (order + (np.arange(shards) * local)[:, None]).reshape(-1)
  order = order.reshape(-1)
  if mesh is not None:
    slot, order = (jax.device_put(x, NamedSharding(mesh, P(axis))) for x in (slot, order))
  return slot, order, query_index, table, counts, mesh, axis


def _per_query(outputs, query_index):
  """Device outputs → host arrays (first, last, n, ap) in query order; raises on non-finite similarity rows."""
  per_query = []
  for o in jax.device_get(outputs):
    x = np.empty_like(o)
    x[query_index] = o
    per_query.append(x)
  first, last, n, ap, bad = per_query
  if bad.any():
    raise ValueError(f"retrieval metrics: similarity has {int(bad.sum())} non-finite values "
                     f"(first in query row {int(np.argmax(bad > 0))})")
  return first, last, n, ap


def _averages(first, last, n, ap, has):
  first = first[has].astype(np.float64)
  return {
      "R1": 100.0 * float(np.mean(first <= 1)),
      "R5": 100.0 * float(np.mean(first <= 5)),
      "R10": 100.0 * float(np.mean(first <= 10)),
      "mAP": 100.0 * float(np.mean(ap[has].astype(np.float64))),
      "mINP": 100.0 * float(np.mean(n[has] / last[has].astype(np.float64))),
  }


def _summarise(outputs, query_index, return_counts):
  first, last, n, ap = _per_query(outputs, query_index)
  has = n > 0
  skipped = int((~has).sum())
  if not has.any():
    raise ValueError(f"retrieval metrics: none of the {n.size} queries has a gallery item with its pid")
  if skipped:
    _LOG.warning("retrieval metrics: %d of %d queries have no positive in the gallery and are excluded",
                 skipped, n.size)
  out = _averages(first, last, n, ap, has)
  if return_counts:
    out["num_queries"] = int(has.sum())
    out["num_queries_without_positive"] = skipped
  return out


def _check_args(ties, block_size, kind):
  if ties not in _TIES:
    raise ValueError(f"retrieval metrics: ties must be one of {_TIES}, got {ties!r}")
  if block_size is None:
    return _CPU_MATRIX_BLOCK if kind == "matrix" and jax.default_backend() == "cpu" else _BLOCK
  if int(block_size) < 1:
    raise ValueError(f"retrieval metrics: block_size must be >= 1, got {block_size}")
  return int(block_size)


def _matrix_outputs(caller, similarity, query_pids, gallery_pids, block_size, ties):
  """Shape checks, then the per-query kernel on similarity [Q, G] → (device outputs, query_index) for _per_query."""
  block = _check_args(ties, block_size, "matrix")
  shape = tuple(np.shape(similarity))
  if len(shape) != 2 or np.shape(query_pids) != shape[:1] or np.shape(gallery_pids) != shape[1:]:
    raise ValueError(f"{caller}: similarity {shape} must be [Q, G] with query_pids {np.shape(query_pids)} "
                     f"[Q] and gallery_pids {np.shape(gallery_pids)} [G]")
  slot, order, query_index, table, counts, mesh, axis = _prepare(query_pids, gallery_pids, similarity)
  return _compiled("matrix", block, ties, mesh, axis)(similarity, slot, order, table, counts), query_index


def retrieval_metrics(similarity, query_pids, gallery_pids, block_size=None, ties="optimistic", return_counts=False):
  """Text→image metrics. similarity [Q, G] (numpy or jax.Array, any float dtype, may be sharded over queries),
  query_pids [Q], gallery_pids [G] -> {"R1","R5","R10","mAP","mINP"} percent floats.

  Queries without any positive are excluded from the averages and counted in a warning (and in the extra keys
  "num_queries" / "num_queries_without_positive" when return_counts=True). Non-finite scores raise ValueError.
  block_size: queries per step (None: 16 on CPU, where small blocks stay in cache, 256 on accelerators).
  """
  return _summarise(*_matrix_outputs("retrieval_metrics", similarity, query_pids, gallery_pids, block_size, ties),
                    return_counts)


def grouped_retrieval_metrics(similarity, query_pids, gallery_pids, query_groups, block_size=None,
                               ties="optimistic"):
  """retrieval_metrics averaged per query group, from one pass: similarity [Q, G], query_pids [Q], gallery_pids [G],
  query_groups [Q] (any hashable labels) -> {label: {"R1", "R5", "R10", "mAP", "mINP", "num_queries",
  "num_queries_without_positive"}}; a group's averages cover its queries that have a positive.

  Each query is still ranked against the whole gallery; to score groups against their own gallery items only, give
  the other items a score below every own one first. A group whose queries have no positive raises ValueError.
  """
  if np.shape(query_groups) != np.shape(query_pids):
    raise ValueError(f"grouped_retrieval_metrics: query_groups {np.shape(query_groups)} must be [Q] like query_pids "
                     f"{np.shape(query_pids)}")
  first, last, n, ap = _per_query(*_matrix_outputs("grouped_retrieval_metrics", similarity, query_pids, gallery_pids,
                                                   block_size, ties))
  groups, out = np.asarray(query_groups), {}
  for label in dict.fromkeys(groups.tolist()):
    in_group = groups == label
    has = in_group & (n > 0)
    if not has.any():
      raise ValueError(f"grouped_retrieval_metrics: no query of group {label!r} has a gallery item with its pid")
    out[label] = _averages(first, last, n, ap, has) | {
        "num_queries": int(has.sum()), "num_queries_without_positive": int((in_group & (n == 0)).sum())}
  return out


def retrieval_metrics_from_embeddings(query_emb, gallery_emb, query_pids, gallery_pids, block_size=None,
                                      ties="optimistic", return_counts=False):
  """Same metrics with similarity = query_emb · gallery_embᵀ computed per query block, so the [Q, G] matrix never
  exists. query_emb [Q, D], gallery_emb [G, D] (any float dtype; products in float32 at HIGHEST precision; pass
  L2-normalised embeddings for cosine), query_pids [Q], gallery_pids [G] -> dict as retrieval_metrics.

  query_emb may be sharded over its first axis (NamedSharding); the gallery is then replicated on every device.
  block_size: queries per step (None: 256).
  """
  block = _check_args(ties, block_size, "embeddings")
  qs, gs = tuple(np.shape(query_emb)), tuple(np.shape(gallery_emb))
  if (len(qs) != 2 or len(gs) != 2 or qs[1] != gs[1] or np.shape(query_pids) != qs[:1]
      or np.shape(gallery_pids) != gs[:1]):
    raise ValueError(f"retrieval_metrics_from_embeddings: query_emb {qs} [Q, D], gallery_emb {gs} [G, D], "
                     f"query_pids {np.shape(query_pids)} [Q], gallery_pids {np.shape(gallery_pids)} [G] disagree")
  slot, order, query_index, table, counts, mesh, axis = _prepare(query_pids, gallery_pids, query_emb)
  fn = _compiled("embeddings", block, ties, mesh, axis)
  return _summarise(fn(query_emb, gallery_emb, slot, order, table, counts), query_index, return_counts)
