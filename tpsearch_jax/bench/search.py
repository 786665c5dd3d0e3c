"""Search section: index build time and queries/s of the sharded brute-force top-k (``tpsearch_jax.search.topk``)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from tpsearch_jax.bench.presets import Preset
from tpsearch_jax.bench.records import Results, median_time
from tpsearch_jax.search import topk


def bench_search(results: Results, preset: Preset, args) -> None:
  """Index build time, first-call time, queries/s and batch latency of exact top-k on a [rows, dim] index."""
  rows = int(args.search_rows or preset.search_rows)
  dim = int(preset.search_dim)
  qb = int(args.search_query_batch or preset.search_query_batch)
  k = int(args.search_k)
  dtype = jnp.dtype(args.search_dtype)
  cfg = {"rows": rows, "dim": dim, "query_batch": qb, "k": k, "index_dtype": dtype.name,
         "devices": jax.device_count()}
  emb = jax.block_until_ready(jax.jit(lambda key: jax.random.normal(key, (rows, dim), dtype))(jax.random.PRNGKey(3)))
  t0 = time.perf_counter()
  index = topk.shard_vectors(emb, np.arange(rows, dtype=np.int32), dtype=dtype, block_size=int(args.search_block))
  jax.block_until_ready(index.embeddings)
  results.add("search/index_build_time", time.perf_counter() - t0, "s", cfg,
              "shard_vectors on device-resident embeddings: normalise + cast + pad + shard")
  del emb
  queries = jax.random.normal(jax.random.PRNGKey(4), (qb, dim), jnp.float32)  # [qb, dim]
  t0 = time.perf_counter()
  jax.block_until_ready(topk.search(index, queries, k))
  results.add("search/first_call_time", time.perf_counter() - t0, "s", cfg, "includes compilation")
  nb = int(args.search_batches or preset.search_batches)

  def run():
    out = None
    for _ in range(nb):
      out = topk.search(index, queries, k)
    jax.block_until_ready(out)

  t, _ = median_time(run, int(args.windows or preset.windows))
  results.add("search/queries_per_sec", nb * qb / t, "queries/s", cfg, f"exact top-{k}; {nb} batch(es) per window")
  results.add("search/batch_latency", t / nb * 1e3, "ms", cfg, f"one batch of {qb} queries")
