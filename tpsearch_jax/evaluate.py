"""Text→image retrieval evaluation, separate from the trainer.

Gallery images and query captions are encoded with the sharded model (each global batch split over the "data"
axis), padded rows dropped with the pipeline's ``valid`` masks, and R@1/5/10, mAP, mINP computed on device with
``tpsearch_jax.metrics`` (query blocks, no [Q, G] matrix). ``results.json`` in the work directory holds one row per
evaluated split.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tpsearch_jax import metrics as retrieval
from tpsearch_jax import sharding as shd

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")
RESULTS_FILE = "results.json"


def _to_host(x: jax.Array) -> np.ndarray:
  """Global array → full numpy copy on every process."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Evaluator:
  """Encodes with ``model.encode_images`` / ``encode_texts`` under ``mesh`` and scores retrieval."""

  def __init__(self, model, mesh: Mesh, params_sharding: Any, block_size: int = 256):
    self.mesh = mesh
    self.block_size = int(block_size)
    batch = shd.batch_sharding(mesh)

    def encoder(method):
      return jax.jit(lambda p, x: model.apply({"params": p}, x, method=method),
                     in_shardings=(params_sharding, batch), out_shardings=batch)

    self._encode = {"images": encoder("encode_images"), "caption_ids": encoder("encode_texts")}
    self._select = {}

  def _gather_valid(self, embs: list[jax.Array], idx: np.ndarray, shard_rows: bool) -> jax.Array:
    """Concatenated embeddings [N, D] → rows ``idx`` [n, D], split over "data" or replicated."""
    out = NamedSharding(self.mesh, P(shd.DATA) if shard_rows else P())
    key = (len(embs), len(idx), shard_rows)
    if key not in self._select:
      self._select[key] = jax.jit(lambda es, i: jnp.take(jnp.concatenate(es, axis=0), i, axis=0), out_shardings=out)
    return self._select[key](embs, jnp.asarray(idx, jnp.int32))

  def encode(self, params, batches: Iterable[Mapping[str, np.ndarray]], key: str,
             shard_rows: bool = False) -> tuple[jax.Array, np.ndarray]:
    """Local numpy batches with ``key`` ("images"|"caption_ids"), "pids", "valid" → (emb [n, D'], pids int [n])."""
    embs, pids, valid = [], [], []
    for b in batches:
      missing = {key, "pids", "valid"} - set(b)
      if missing:
        raise KeyError(f"evaluation batch lacks {sorted(missing)} (present: {sorted(b)})")
      g = shd.to_global({key: b[key], "pids": b["pids"], "valid": b["valid"]}, self.mesh)
      embs.append(self._encode[key](params, g[key]))
      pids.append(g["pids"])
      valid.append(g["valid"])
    if not embs:
      raise ValueError(f"evaluation produced no {key} batches")
    pids_h = np.concatenate([_to_host(p) for p in pids])
    valid_h = np.concatenate([_to_host(v) for v in valid]).astype(bool)
    idx = np.flatnonzero(valid_h)
    if shard_rows and len(idx) % self.mesh.size:
      shard_rows = False
    return self._gather_valid(embs, idx, shard_rows), pids_h[idx]

  def evaluate(self, params, image_batches, text_batches) -> dict[str, float | int]:
    """Gallery/query batches → {"R1","R5","R10","mAP","mINP" (percent), "num_queries", "num_gallery"}."""
    gallery, gallery_pids = self.encode(params, image_batches, "images")
    shard_queries = jax.process_count() == 1  # per-query outputs must be addressable for the host summary
    queries, query_pids = self.encode(params, text_batches, "caption_ids", shard_rows=shard_queries)
    result = retrieval.retrieval_metrics_from_embeddings(queries, gallery, query_pids, gallery_pids,
                                                         block_size=self.block_size, return_counts=True)
    row = {k: float(result[k]) for k in METRIC_KEYS}
    row["num_queries"] = int(len(query_pids))
    row["num_gallery"] = int(len(gallery_pids))
    row["num_queries_without_positive"] = int(result.get("num_queries_without_positive", 0))
    return row


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
  """{name: row} → a fixed-width text table of R@1/5/10, mAP, mINP, counts, step and checkpoint."""
  head = (f"{'split':<12}" + "".join(f"{k:>8}" for k in METRIC_KEYS)
          + f"{'queries':>9}{'gallery':>9}{'step':>8}  checkpoint")
  lines = [head, "-" * len(head)]
  for name, r in rows.items():
    lines.append(f"{name:<12}" + "".join(f"{r[k]:8.3f}" for k in METRIC_KEYS)
                 + f"{r['num_queries']:9d}{r['num_gallery']:9d}{r.get('step', -1):8d}  {r.get('checkpoint', '')}")
  return "\n".join(lines)


def write_results(workdir: str, payload: Mapping[str, Any]) -> str:
  """Writes ``payload`` to WORKDIR/results.json (process 0 only); returns the path."""
  path = epath.Path(workdir) / RESULTS_FILE
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
  return str(path)
