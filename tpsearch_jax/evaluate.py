"""Text→image retrieval evaluation, separate from the trainer.

Gallery images and query captions are encoded with the sharded model (each global batch split over every device),
padded rows dropped with the pipeline's ``valid`` masks, and R@1/5/10, mAP, mINP computed on device with
``tpsearch_jax.metrics`` (query blocks, no [Q, G] matrix): the gallery replicated on the devices, the queries staying
where they were read (each process scores its own on its own devices; the processes then add up a few sums).
``evaluate_splits`` runs it on several splits; ``results.json`` in the work directory holds one row per evaluated
split (``results_payload`` / ``report``).
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tpsearch_jax import metrics as retrieval
from tpsearch_jax import sharding as shd

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")
RESULTS_FILE = "results.json"


def _global_rows(local: np.ndarray, rows_per_batch: int) -> np.ndarray:
  """This process's rows of every batch [num_batches · b, ...] → all processes' rows in global batch order
  [num_batches · b · processes, ...] on every process. For O(N) vectors (pids, valid masks) only."""
  if jax.process_count() == 1:
    return local
  every = np.asarray(multihost_utils.process_allgather(local))  # [processes, num_batches · b, ...]
  p, n = every.shape[:2]
  every = every.reshape(p, n // rows_per_batch, rows_per_batch, *every.shape[2:])
  return np.swapaxes(every, 0, 1).reshape(p * n, *every.shape[3:])


class MetricsError(ValueError):
  """Retrieval metrics failed (non-finite scores, no positives); raised on every process alike."""


def _sum_over_processes(x: np.ndarray) -> np.ndarray:
  """float64 [k] summed over processes, bit-exact (sent as uint32 pairs: jax without x64 has no float64)."""
  x = np.ascontiguousarray(x, np.float64)
  if jax.process_count() == 1:
    return x
  words = np.asarray(multihost_utils.process_allgather(x.view(np.uint32)))  # [processes, 2k]
  return np.ascontiguousarray(words, np.uint32).view(np.float64).reshape(jax.process_count(), -1).sum(axis=0)


class Evaluator:
  """Encodes with ``model.encode_images`` / ``encode_texts`` under ``mesh`` and scores retrieval.

  At scale (several processes, large galleries) nothing of size Q×G is ever formed, and no embedding matrix is
  gathered to a host: the gallery [G, D] is replicated on the devices (as the metric algorithm needs), each process
  scores only its own queries (the rows of the query batches it read) on its own devices, and the processes exchange
  eight numbers per split. Only the O(G) gallery pids are gathered.
  """

  def __init__(self, model, mesh: Mesh, params_sharding: Any, block_size: int = 256):
    self.mesh = mesh
    self.local_mesh = shd.local_mesh(mesh)
    self.block_size = int(block_size)
    batch = shd.batch_sharding(mesh)

    def encoder(method):
      return jax.jit(lambda p, x: model.apply({"params": p}, x, method=method),
                     in_shardings=(params_sharding, batch), out_shardings=batch)

    self._encode = {"images": encoder("encode_images"), "caption_ids": encoder("encode_texts")}
    self._select = {}

  def _take(self, embs: list[jax.Array], idx: np.ndarray, out: NamedSharding) -> jax.Array:
    """Concatenated embeddings [N, D] → rows ``idx`` [n, D] with sharding ``out``."""
    key = (len(embs), len(idx), out)
    if key not in self._select:
      self._select[key] = jax.jit(lambda es, i: jnp.take(jnp.concatenate(es, axis=0), i, axis=0), out_shardings=out)
    return self._select[key](embs, jnp.asarray(idx, jnp.int32))

  def _encode_batches(self, params, batches, key: str):
    """→ (global embeddings per batch, local numpy pids [n_local_rows], local valid [n_local_rows])."""
    embs, pids, valid = [], [], []
    for b in batches:
      missing = {key, "pids", "valid"} - set(b)
      if missing:
        raise KeyError(f"evaluation batch lacks {sorted(missing)} (present: {sorted(b)})")
      embs.append(self._encode[key](params, shd.to_global({key: b[key]}, self.mesh)[key]))
      pids.append(np.asarray(b["pids"]))
      valid.append(np.asarray(b["valid"], bool))
    if not embs:
      raise ValueError(f"evaluation produced no {key} batches")
    return embs, np.concatenate(pids), np.concatenate(valid)

  def encode(self, params, batches: Iterable[Mapping[str, np.ndarray]], key: str,
             shard_rows: bool = False) -> tuple[jax.Array, np.ndarray]:
    """Local numpy batches with ``key`` ("images"|"caption_ids"), "pids", "valid" → (emb [n, D'], pids int [n]) of
    every process's valid rows: global, replicated on every device (or split over the mesh with ``shard_rows`` when
    n divides evenly). The gallery side of the evaluation."""
    embs, pids, valid = self._encode_batches(params, batches, key)
    both = _global_rows(np.stack([pids.astype(np.int32), valid.astype(np.int32)], axis=1), len(valid) // len(embs))
    pids_h, idx = both[:, 0], np.flatnonzero(both[:, 1])
    shard_rows = shard_rows and len(idx) % self.mesh.size == 0
    out = shd.batch_sharding(self.mesh) if shard_rows else shd.replicated(self.mesh)
    return self._take(embs, idx, out), pids_h[idx]

  def encode_local(self, params, batches: Iterable[Mapping[str, np.ndarray]],
                   key: str) -> tuple[jax.Array | None, np.ndarray, int]:
    """Like ``encode`` but → (emb [n_local, D'] of THIS process's valid rows on its own devices (split over them
    when n_local divides evenly, else replicated; None when n_local = 0), their pids [n_local], local rows read).
    The query side: nothing leaves the process."""
    embs, pids, valid = self._encode_batches(params, batches, key)
    idx = np.flatnonzero(valid)
    if not len(idx):
      return None, pids[idx], len(valid)
    local = [shd.local_rows(e, self.local_mesh) for e in embs]
    split = len(idx) % self.local_mesh.size == 0
    out = NamedSharding(self.local_mesh, P(shd.DATA) if split else P())
    return self._take(local, idx, out), pids[idx], len(valid)

  def _local_sums(self, queries, query_pids, gallery, gallery_pids) -> np.ndarray:
    """float64 [8]: queries with a positive, Σ R1, R5, R10, AP, INP hits (fractions), queries without, error flag."""
    has = np.isin(query_pids, gallery_pids)
    out = np.zeros(8)
    out[6] = float((~has).sum())
    if not has.any():
      return out
    try:
      r = retrieval.retrieval_metrics_from_embeddings(queries, shd.local_copy(gallery, self.local_mesh), query_pids,
                                                      gallery_pids, block_size=self.block_size, return_counts=True)
    except ValueError as e:
      logging.error("retrieval metrics failed on process %d: %s", jax.process_index(), e)
      out[7] = 1.0
      return out
    n = float(r["num_queries"])
    out[:6] = [n, *(r[k] * n / 100.0 for k in METRIC_KEYS)]
    return out

  def evaluate(self, params, image_batches, text_batches) -> dict[str, float | int]:
    """Gallery/query batches → {"R1","R5","R10","mAP","mINP" (percent), "num_queries", "num_gallery",
    "num_queries_without_positive"}; every process gets the same row."""
    return self.evaluate_with_subsets(params, image_batches, text_batches)[0]

  def evaluate_with_subsets(self, params, image_batches, text_batches,
                            query_subsets: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, dict]]:
    """As ``evaluate``, plus one row per query subset against the same gallery → (row, {name: row}).

    query_subsets: {name: int indices [n] or bool mask [Q] over the split's queries in their global order (the
    order of ``annotations.EvalSplit.captions``)}; the text batches then need "index" (int [b], each row's position
    in that order, as the eval pipeline gives it).
    """
    gallery, gallery_pids = self.encode(params, image_batches, "images")
    queries, query_pids, rows = self.encode_local(params, text_batches, "caption_ids")
    logging.info("process %d/%d scores its %d queries (of %d rows read) against the %d gallery items on %d devices",
                 jax.process_index(), jax.process_count(), len(query_pids), rows, len(gallery_pids),
                 self.local_mesh.size)
    row = self._row(queries, query_pids, gallery, gallery_pids)
    subsets = {}
    if query_subsets:
      positions = self._query_index(text_batches)  # [n_local]: global query index of each local query
      for name, subset in query_subsets.items():
        subset = np.asarray(subset)
        if subset.dtype == bool:
          if len(positions) and len(subset) <= positions.max():
            raise ValueError(f"query subset {name!r}: a mask of {len(subset)} entries for more queries")
          keep, size = subset[positions], int(subset.sum())
        else:
          keep, size = np.isin(positions, subset), len(np.unique(subset))
        if not size:
          raise ValueError(f"query subset {name!r} is empty")
        idx = np.flatnonzero(keep)
        sub = self._take([queries], idx, NamedSharding(self.local_mesh, P())) if len(idx) else None
        subsets[name] = self._row(sub, query_pids[idx], gallery, gallery_pids)
    return row, subsets

  @staticmethod
  def _query_index(text_batches) -> np.ndarray:
    """int64 [n_local]: the global query index of each of this process's valid query rows (the batches' "index")."""
    if any("index" not in b for b in text_batches):
      raise KeyError("query subsets need text batches with an 'index' key (each caption's position in the split, as "
                     "data.pipeline.evaluation.eval_datasets gives it)")
    index = np.concatenate([np.asarray(b["index"], np.int64) for b in text_batches])
    return index[np.concatenate([np.asarray(b["valid"], bool) for b in text_batches])]

  def _row(self, queries, query_pids, gallery, gallery_pids) -> dict[str, float | int]:
    """Metrics row of these (local) queries, summed over processes; raises MetricsError like ``evaluate``."""
    local = self._local_sums(queries, query_pids, gallery, gallery_pids)  # no local queries: zeros
    total = _sum_over_processes(np.append(local, len(query_pids)))
    with_pos, sums, without, failed, num_queries = total[0], total[1:6], total[6], total[7], total[8]
    if failed:
      raise MetricsError(f"retrieval metrics failed on {int(failed)} process(es); see the error logged above or in "
                         "the other processes' logs")
    if not with_pos:
      raise MetricsError(f"retrieval metrics: none of the {int(num_queries)} queries has a gallery item with its pid")
    row = {k: float(100.0 * v / with_pos) for k, v in zip(METRIC_KEYS, sums)}
    row["num_queries"] = int(num_queries)
    row["num_gallery"] = int(len(gallery_pids))
    row["num_queries_without_positive"] = int(without)
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


def write_results(workdir: str, payload: Mapping[str, Any], name: str = RESULTS_FILE) -> str:
  """Writes ``payload`` to WORKDIR/``name`` (default results.json; process 0 only); returns the path."""
  path = epath.Path(workdir) / name
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
  return str(path)


def evaluate_splits(evaluator: Evaluator, params, batches_of: Callable[[str], tuple[Iterable, Iterable]],
                    splits: Sequence[str], step: int, checkpoint: str, epoch: int | None = None,
                    query_subsets: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
  """{split: metrics row + step, checkpoint (and epoch)} for ``splits``; ``batches_of(split)`` → (images, texts).

  query_subsets: {split: {name: query indices or mask}} (``Evaluator.evaluate_with_subsets``); each adds the row
  "<split>_<name>" (e.g. "test_hard") after its split's row.
  """
  rows = {}
  for split in splits:
    t0 = time.time()
    images, texts = batches_of(split)
    row, subsets = evaluator.evaluate_with_subsets(params, images, texts, (query_subsets or {}).get(split))
    for name, r in {split: row, **{f"{split}_{k}": v for k, v in subsets.items()}}.items():
      r.update(step=int(step), checkpoint=checkpoint)
      if epoch is not None:
        r["epoch"] = int(epoch)
      rows[name] = r
      logging.info("eval %s @ step %d (%s): %s [%.1fs]", name, step, checkpoint,
                   ", ".join(f"{k} {r[k]:.3f}" for k in METRIC_KEYS), time.time() - t0)
  return rows


def results_payload(config, rows: Mapping[str, dict], last_rows: Mapping[str, dict] | None = None) -> dict:
  """The results.json content: dataset, method, selection split, one row per split (and the last state's rows)."""
  payload = {"dataset": config.data.name, "method": config.model.name, "select_on": config.eval.select_on,
             "splits": dict(rows)}
  if last_rows:
    payload["last"] = dict(last_rows)
  return payload


def report(workdir: str, payload: Mapping[str, Any], name: str = RESULTS_FILE) -> str:
  """Writes WORKDIR/``name`` (default results.json) and prints the results table (process 0); returns its path."""
  path = write_results(workdir, payload, name)
  table = dict(payload["splits"])
  table.update({f"{k} (last)": v for k, v in payload.get("last", {}).items()})
  if jax.process_index() == 0:
    logging.info("Results written to %s", path)
    print(format_table(table), flush=True)
  return path
