"""An index folder and its run loaded once, ready to answer many queries (the CLI ``query``, the web server).

The model is loaded and its text encoder jitted and warmed at start; queries are encoded ``query_batch`` at a time
and searched with one fixed k (``k_search``), so no query compiles anything. Each hit carries the similarity split
into its pieces (``explain.explanation``). Thread-safe: jitted calls and numpy reads only.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import numpy as np
from absl import logging

from tpsearch_jax import user_errors
from tpsearch_jax.models import text_tokenizers
from tpsearch_jax.search import explain, library
from tpsearch_jax.search import index as search_index

MAX_K = 100


def check_request(sentences: Sequence[str], k: int, max_k: int = MAX_K) -> None:
  """Raises UserError naming the problem unless every sentence has text and 1 ≤ k ≤ max_k (no model work)."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= max_k:
    raise user_errors.UserError(f"k must be an integer between 1 and {max_k}, got {k!r}")
  for i, s in enumerate(sentences):
    if not isinstance(s, str) or not s.strip():
      raise user_errors.UserError(f"query {i + 1} is empty ({s!r}): pass a description of the person, e.g. "
                                  "\"a woman in a red coat\"")


@dataclasses.dataclass(frozen=True)
class Hit:
  """One result: rank (1 = best), index row, absolute path, path relative to the indexed folder, cosine, why."""

  rank: int
  id: int
  path: str
  relpath: str
  score: float
  explanation: dict


class Searcher:
  """``Searcher(INDEX)``: exactly the checkpoint that built the index (``workdir``: the run folder moved there),
  ready to search; ``library.FingerprintMismatch`` / ``BadIndex`` (one line saying how to fix it) otherwise.

  query_batch: sentences encoded per call (rounded up to the device count); 1 suits a server answering one query
  per request (a larger batch costs its full size even for one query), more suits batches of queries."""

  def __init__(self, index_dir: str, workdir: str | None = None, max_k: int = MAX_K, query_batch: int = 1,
               warm: bool = True):
    data = library.read_index(index_dir)
    self.index_dir, self.meta, self.paths = index_dir, data["meta"], data["paths"]
    self.embeddings, self.foreground = data["embeddings"], data["foreground"]
    self.root = self.meta.get("images_root") or os.path.commonpath(self.paths)
    run = library.load_pinned_run(self.meta, index_dir, workdir)
    self.workdir = workdir or self.meta["workdir"]
    self.run, self.mesh = run, run.mesh
    self.layout = (explain.Layout.from_json(self.meta["layout"]) if "layout" in self.meta
                   else explain.layout_from_config(run.config, self.embeddings.shape[1],
                                                   None if self.foreground is None else self.foreground.shape[1]))
    self.context_length = int(run.config.data.context_length)
    self.tokenize = text_tokenizers.caption_tokenizer(run.config.data)
    self.query_batch = -(-max(1, query_batch) // self.mesh.size) * self.mesh.size
    self.max_k = max_k
    self.k_search = max(1, min(max_k, len(self.paths)))
    self._encoder = library.text_encoder(run.model, self.mesh)
    self.index = search_index.build_index(self.embeddings, np.arange(len(self.paths)), mesh=self.mesh,
                                          dtype=np.float32)
    if warm:
      start = time.perf_counter()
      self.search(["a person"], 1)
      logging.info("search warmed up in %.1f s (%d images, method %s)", time.perf_counter() - start, len(self.paths),
                   self.meta.get("method"))

  @property
  def num_images(self) -> int:
    return len(self.paths)

  def relpath(self, row: int) -> str:
    return os.path.relpath(self.paths[row], self.root)

  def encode(self, sentences: Sequence[str]) -> np.ndarray:
    """Sentences → float32 [Q, D] retrieval vectors, encoded ``query_batch`` at a time (one compiled shape)."""
    out = []
    for start in range(0, len(sentences), self.query_batch):
      chunk = list(sentences[start:start + self.query_batch])
      padded = chunk + [""] * (self.query_batch - len(chunk))
      vec = library.encode_texts(self.run.model, self.mesh, self.run.params, padded, self.context_length,
                                 encoder=self._encoder, tokenize=self.tokenize)
      out.append(vec[:len(chunk)])
    return np.concatenate(out)

  def search(self, sentences: Sequence[str], k: int = 10) -> list[list[Hit]]:
    """Top-min(k, n) hits per sentence, best first, each with its explanation; 1 ≤ k ≤ ``max_k``."""
    check_request(sentences, k, self.max_k)
    if not sentences:
      return []
    k = min(k, self.k_search)
    queries = self.encode(sentences)
    scores, ids = search_index.search_batched(self.index, queries, self.k_search, query_batch=self.query_batch)
    results = []
    for q, srow, irow in zip(queries, scores[:, :k], ids[:, :k]):
      why = explain.explanation(q, self.embeddings[irow], self.layout)
      results.append([Hit(r + 1, int(i), self.paths[i], self.relpath(int(i)), float(s), w)
                      for r, (s, i, w) in enumerate(zip(srow, irow, why))])
    return results

  def foreground_of(self, row: int) -> np.ndarray | None:
    """The stored foreground map float32 [gh·gw] of index row ``row`` (part models), else None."""
    return None if self.foreground is None else self.foreground[row].astype(np.float32)


def query(index_dir: str, sentences: Sequence[str], k: int = 10, workdir: str | None = None):
  """Top-k gallery images per sentence → list of [(absolute path, cosine)] lists (best first)."""
  check_request(sentences, k, max(k, MAX_K) if isinstance(k, int) else MAX_K)
  searcher = Searcher(index_dir, workdir=workdir, max_k=max(k, MAX_K), query_batch=min(len(sentences), 32),
                      warm=False)
  return [[(h.path, h.score) for h in hits] for hits in searcher.search(sentences, k)]
