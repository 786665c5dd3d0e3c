"""Approximate (FAISS) vs exact search, side by side in one run: recall@10 against exact float32 top-10, queries/s,
build time and peak memory, at 1M and 5M vectors with the structure of real galleries.

The vectors are a trained run's own: every image of its dataset encoded (the base, one vector per photo) and the
captions encoded as queries. A gallery of N rows is the base replicated N / base times with per-copy Gaussian
noise (each copy renormalised; ``--noise`` is the noise norm, 0.5 ≈ cosine 0.89 to its original), so it has the
clusters of a camera network (many crops per person), not i.i.d. random vectors. Rows are made chunk by chunk
from a seed, so the exact index, the float32 ground truth and the FAISS index see the same rows without the whole
gallery ever being held twice.

    nice -n 10 python benchmarks/search_ann.py --workdir=RUN --rows=1000000,5000000 --out=/tmp/search_ann.json

Exact: ``tpsearch_jax.search.topk`` (sharded brute-force top-k, bfloat16 as the benchmark section measures it, and
float32 as ``search`` builds it from an index folder, at 1M). FAISS: ``ann.build`` (IVF-Flat by default) at several
``nprobe`` values, and HNSW32 at 1M. Queries are answered in batches of ``--query_batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from tpsearch_jax.data import annotations
from tpsearch_jax.search import ann, encoding, topk
from tpsearch_jax.training import runs

CHUNK = 250_000


def peak_rss_gb() -> float:
  """Peak resident memory of this process so far, GB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def base_vectors(workdir: str, cache: str, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
  """(image vectors f32 [B, D] of every image of the run's dataset, caption vectors f32 [Q, D]), cached in ``cache``."""
  if os.path.isfile(cache):
    z = np.load(cache)
    return z["images"], z["queries"]
  run = runs.load_run(workdir)
  d = run.options.data
  ann_ = annotations.read_annotations(d.name, d.root)
  paths = [r.image_path for s in annotations.SPLITS for r in ann_.images(s)]
  images, _, _, _ = encoding.encode_images(run.model, run.mesh, run.params, paths, tuple(d.image_size), 64,
                                           skip_bad=False, normalization=d.get("normalization", "clip"))
  test = ann_.split("test").captions + ann_.split("val").captions
  captions = [test[i] for i in np.random.default_rng(0).permutation(len(test))[:num_queries]]
  queries = encoding.encode_texts(run.model, run.mesh, run.params, captions, int(d.context_length))
  np.savez(cache, images=images, queries=queries)
  return images, queries


def chunk(base: np.ndarray, rows: int, start: int, noise: float, seed: int) -> np.ndarray:
  """Rows [start, start + CHUNK) of the replicated gallery, f32 [≤ CHUNK, D]: row r = base[r mod B] + noise."""
  stop = min(rows, start + CHUNK)
  rng = np.random.default_rng([seed, start])
  x = base[np.arange(start, stop) % len(base)]
  x = x + rng.standard_normal(x.shape, dtype=np.float32) * (noise / np.sqrt(x.shape[1]))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def ground_truth(base, rows, queries, noise, seed, k=10) -> np.ndarray:
  """Exact float32 top-k rows [Q, k] by a chunked numpy scan."""
  best_s = np.full((len(queries), k), -np.inf, np.float32)
  best_i = np.zeros((len(queries), k), np.int64)
  for start in range(0, rows, CHUNK):
    s = queries @ chunk(base, rows, start, noise, seed).T
    top = np.argpartition(-s, k, axis=1)[:, :k]
    cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
    cand_i = np.concatenate([best_i, top + start], 1)
    order = np.argsort(-cand_s, axis=1)[:, :k]
    best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
  return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
  return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def timed_queries(fn, queries: np.ndarray, batch: int, min_seconds: float = 3.0):
  """Runs ``fn(batch of queries) → (scores, rows)`` over all queries (first call discarded as warm-up), repeated
  until ``min_seconds`` → (queries/s, rows [Q, 10])."""
  fn(queries[:batch])
  found, done, start = None, 0, time.perf_counter()
  while True:
    out = [np.asarray(fn(queries[i:i + batch])[1])[:, :10] for i in range(0, len(queries), batch)]
    done += len(queries)
    found = np.concatenate(out) if found is None else found
    if time.perf_counter() - start >= min_seconds:
      return done / (time.perf_counter() - start), found


def exact_rows(base, rows, queries, args, dtype) -> dict:
  data = np.empty((rows, base.shape[1]), dtype)
  for start in range(0, rows, CHUNK):
    data[start:start + CHUNK] = chunk(base, rows, start, args.noise, args.seed).astype(dtype)
  t0 = time.perf_counter()
  index = topk.shard_vectors(data, np.arange(rows, dtype=np.int32), dtype=dtype, normalize=False)
  jax.block_until_ready(index.embeddings)
  build = time.perf_counter() - t0
  del data
  qb = args.query_batch

  def fn(q):
    q = np.concatenate([q, np.ones((qb - len(q), q.shape[1]), q.dtype)]) if len(q) < qb else q
    return topk.search(index, jnp.asarray(q), 10)

  qps, found = timed_queries(fn, queries, qb)
  del index
  return {"qps": qps, "found": found[:len(queries)], "build_s": build}


def faiss_rows(base, rows, queries, args, factory: str, probes) -> list[dict]:
  """Builds ``factory`` over the gallery (trained on its first rows, the rest added chunk by chunk) and measures
  each probe → [{"probe", "qps", "found", "build_s"}]."""
  t0 = time.perf_counter()
  first = np.concatenate([chunk(base, rows, s, args.noise, args.seed) for s in range(0, min(rows, 4 * CHUNK), CHUNK)])
  index, _ = ann.build(first, factory, probes[0], seed=args.seed)
  for start in range(len(first), rows, CHUNK):
    index.add(chunk(base, rows, start, args.noise, args.seed))
  del first
  build = time.perf_counter() - t0
  out = []
  for probe in probes:
    ann.set_probe(index, probe)
    qps, found = timed_queries(lambda q: ann.search(index, q, 10), queries, args.query_batch)
    out.append({"probe": probe, "qps": qps, "found": found, "build_s": build})
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="trained run whose dataset images and captions are encoded")
  p.add_argument("--cache", default="/tmp/search_ann_base.npz", help="encoded base vectors (written once)")
  p.add_argument("--rows", default="1000000,5000000")
  p.add_argument("--queries", type=int, default=500)
  p.add_argument("--query_batch", type=int, default=256)
  p.add_argument("--noise", type=float, default=0.5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--probes", default="8,16,32,64")
  p.add_argument("--hnsw_rows", type=int, default=1_000_000, help="also measure HNSW32 up to this many rows")
  p.add_argument("--f32_rows", type=int, default=1_000_000, help="also measure the float32 exact index up to here")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  base, queries = base_vectors(args.workdir, args.cache, args.queries)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  print(f"base {base.shape}, queries {queries.shape}, devices {jax.device_count()}, faiss threads {ann.threads()}",
        flush=True)
  results = {"host": platform.node(), "cpus": os.cpu_count(), "python": sys.version.split()[0], "jax": jax.__version__,
             "numpy": np.__version__, "faiss": ann.version(), "load_before": os.getloadavg(),
             "base": list(base.shape), "queries": len(queries), "noise": args.noise, "rows": []}
  for rows in (int(r) for r in args.rows.split(",")):
    truth = ground_truth(base, rows, queries, args.noise, args.seed)
    line = {"rows": rows}
    variants = [("exact bf16", lambda: exact_rows(base, rows, queries, args, jnp.bfloat16))]
    if rows <= args.f32_rows:
      variants.append(("exact f32", lambda: exact_rows(base, rows, queries, args, np.float32)))
    for name, fn in variants:
      r = fn()
      line[name] = {"qps": r["qps"], "recall@10": recall(r["found"], truth), "build_s": r["build_s"]}
      print(rows, name, json.dumps(line[name]), f"peak {peak_rss_gb():.2f} GB", flush=True)
    faiss_variants = [(ann.default_factory(rows), [int(x) for x in args.probes.split(",")])]
    if rows <= args.hnsw_rows:
      faiss_variants.append(("HNSW32", [64, 128, 256]))
    for factory, probes in faiss_variants:
      for r in faiss_rows(base, rows, queries, args, factory, probes):
        name = f"faiss {factory} probe {r['probe']}"
        line[name] = {"qps": r["qps"], "recall@10": recall(r["found"], truth), "build_s": r["build_s"]}
        print(rows, name, json.dumps(line[name]), f"peak {peak_rss_gb():.2f} GB", flush=True)
    line["peak_rss_gb"] = peak_rss_gb()
    results["rows"].append(line)
  results["load_after"] = os.getloadavg()
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
