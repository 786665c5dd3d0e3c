"""Micro-benchmark of the sort-free retrieval metrics (not a test).

  JAX_PLATFORMS=cpu python benchmarks/metrics_bench.py                 # 20k × 20k, ICFG-like identity counts
  python benchmarks/metrics_bench.py --queries 19848 --gallery 19848 --dim 512   # also the embedding variant

Prints seconds per evaluation (compilation excluded: one untimed warm-up call) and queries per second.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from tpsearch_jax.metrics import retrieval_metrics, retrieval_metrics_from_embeddings


def _timed(fn, repeats):
  fn()  # compile + first run
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - start)
  return best, out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--queries", type=int, default=20_000)
  parser.add_argument("--gallery", type=int, default=20_000)
  parser.add_argument("--ids", type=int, default=1_000, help="identities; gallery pids drawn uniformly")
  parser.add_argument("--dim", type=int, default=0, help="> 0: also time retrieval_metrics_from_embeddings")
  parser.add_argument("--block-size", type=int, default=0, help="queries per block; 0 = the metric's default")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  block = args.block_size or None

  rng = np.random.default_rng(0)
  gp = rng.integers(0, args.ids, size=args.gallery)
  qp = rng.choice(gp, size=args.queries)
  k_sim, k_q, k_g = jax.random.split(jax.random.key(0), 3)
  sim = jax.block_until_ready(jax.random.normal(k_sim, (args.queries, args.gallery), jnp.float32))
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, "
        f"Q={args.queries} G={args.gallery} ids={args.ids} max positives={np.bincount(gp).max()} "
        f"block={block or 'default'}")

  secs, out = _timed(lambda: retrieval_metrics(sim, qp, gp, block_size=block), args.repeats)
  print(f"retrieval_metrics (matrix): {secs:.3f} s, {args.queries / secs:,.0f} queries/s, "
        f"{args.queries * args.gallery / secs / 1e9:.2f} G scores/s; R1={out['R1']:.3f} mAP={out['mAP']:.3f}")
  del sim

  if args.dim > 0:
    qe = jax.random.normal(k_q, (args.queries, args.dim), jnp.float32)
    ge = jax.random.normal(k_g, (args.gallery, args.dim), jnp.float32)
    secs, out = _timed(lambda: retrieval_metrics_from_embeddings(qe, ge, qp, gp, block_size=block),
                       args.repeats)
    print(f"retrieval_metrics_from_embeddings (D={args.dim}): {secs:.3f} s, {args.queries / secs:,.0f} queries/s")


if __name__ == "__main__":
  main()
