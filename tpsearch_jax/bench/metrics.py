"""Metrics section: ``tpsearch_jax.metrics`` from a [Q, G] matrix and from embeddings, at dataset test sizes.

Sizes are keys of ``presets.DATASET_SIZES`` or ``QUERIESxGALLERYxIDS``, e.g. an ICFG-like 20k × 20k run:
``python -m tpsearch_jax.benchmark --skip=train,eval,search --metrics_sizes=20000x20000x1000 --metrics_repeats=2``.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from tpsearch_jax import metrics
from tpsearch_jax.bench.presets import Preset, base_config, dataset_size, sizes
from tpsearch_jax.bench.records import Results, median_time
from tpsearch_jax.search import topk


def _unit_normal(key, rows: int, dim: int) -> jax.Array:
  """[rows, dim] float32 standard normal rows scaled to unit L2 norm."""
  return topk.l2_normalize(jax.random.normal(key, (rows, dim)))


def bench_metrics(results: Results, preset: Preset, args) -> None:
  """retrieval_metrics (from a [Q, G] matrix) and retrieval_metrics_from_embeddings at the chosen sizes."""
  dim = int(args.metrics_dim or (512 if not preset.tiny else 64))
  block = args.metrics_block_size  # None: the matrix metric's default; the config's eval.block_size for embeddings
  emb_block = int(block or base_config("irra", args.config_file).eval.block_size)
  rng = np.random.default_rng(2)
  normal = jax.jit(_unit_normal, static_argnums=(1, 2))
  for size in sizes(args.metrics_sizes, preset.metrics_sizes):
    n_img, n_txt, n_ids = dataset_size(size)
    gp = rng.permutation(np.arange(n_img) % n_ids).astype(np.int32)
    qp = rng.permutation(np.arange(n_txt) % n_ids).astype(np.int32)
    kq, kg = jax.random.split(jax.random.PRNGKey(len(size) + n_img))
    q, g = normal(kq, n_txt, dim), normal(kg, n_img, dim)  # [Q, D], [G, D]
    sim = jax.block_until_ready(jax.jit(lambda a, b: a @ b.T)(q, g))  # [Q, G]
    cfg = {"queries": n_txt, "gallery": n_img, "ids": n_ids, "dim": dim}
    matrix_extra = {} if block is None else {"block_size": block}
    for label, fn, extra in (
        ("retrieval_metrics", lambda: metrics.retrieval_metrics(sim, qp, gp, block_size=block), matrix_extra),
        ("retrieval_metrics_from_embeddings",
         lambda: metrics.retrieval_metrics_from_embeddings(q, g, qp, gp, block_size=emb_block),
         {"block_size": emb_block})):
      t0 = time.perf_counter()
      fn()
      first = time.perf_counter() - t0
      t, _ = median_time(fn, int(args.metrics_repeats))
      results.add(f"metrics/{size}/{label}", t, "s", dict(cfg, **extra),
                  f"{n_txt:,} queries × {n_img:,} gallery; first call (with compile) {first:.2f} s")
    del sim, q, g
