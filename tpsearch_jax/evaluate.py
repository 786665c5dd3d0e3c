"""Text→image retrieval evaluation, separate from the trainer.

Gallery images and query captions are encoded with the sharded model (each global batch split over the "data"
axis), padded rows dropped with the pipeline's ``valid`` masks, and R@1/5/10, mAP, mINP computed on device with
``tpsearch_jax.metrics`` (query blocks, no [Q, G] matrix). ``evaluate_splits`` runs it on several splits;
``results.json`` in the work directory holds one row per evaluated split (``results_payload`` / ``report``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from absl import logging
from jax.sharding import Mesh

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
    out = shd.batch_sharding(self.mesh) if shard_rows else shd.replicated(self.mesh)
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


def evaluate_splits(evaluator: Evaluator, params, batches_of: Callable[[str], tuple[Iterable, Iterable]],
                    splits: Sequence[str], step: int, checkpoint: str, epoch: int | None = None) -> dict[str, dict]:
  """{split: metrics row + step, checkpoint (and epoch)} for ``splits``; ``batches_of(split)`` → (images, texts)."""
  rows = {}
  for split in splits:
    t0 = time.time()
    images, texts = batches_of(split)
    row = evaluator.evaluate(params, images, texts)
    row.update(step=int(step), checkpoint=checkpoint)
    if epoch is not None:
      row["epoch"] = int(epoch)
    rows[split] = row
    logging.info("eval %s @ step %d (%s): %s [%.1fs]", split, step, checkpoint,
                 ", ".join(f"{k} {row[k]:.3f}" for k in METRIC_KEYS), time.time() - t0)
  return rows


def results_payload(config, rows: Mapping[str, dict], last_rows: Mapping[str, dict] | None = None) -> dict:
  """The results.json content: dataset, method, selection split, one row per split (and the last state's rows)."""
  payload = {"dataset": config.data.name, "method": config.model.name, "select_on": config.eval.select_on,
             "splits": dict(rows)}
  if last_rows:
    payload["last"] = dict(last_rows)
  return payload


def report(workdir: str, payload: Mapping[str, Any]) -> str:
  """Writes results.json and prints the results table (process 0); returns the file's path."""
  path = write_results(workdir, payload)
  table = dict(payload["splits"])
  table.update({f"{k} (last)": v for k, v in payload.get("last", {}).items()})
  logging.info("Results written to %s", path)
  if jax.process_index() == 0:
    print(format_table(table), flush=True)
  return path
