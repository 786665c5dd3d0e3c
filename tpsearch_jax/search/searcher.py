"""An index folder and its run loaded once, ready to answer many queries (the CLI ``query``, the web server).

The model is loaded and its text encoder jitted and warmed at start; queries are encoded ``query_batch`` at a time
and searched with one fixed k (``k_search``), so no query compiles anything. Each answer says what the model read of
the query (``query_text.reading``); each hit carries the similarity split into its pieces (``explain.explanation``)
and, on request, each phrase's contribution (``attribution``). A long query can be read sentence by sentence
(``mode``: "mean" of the normalised sentence vectors, or the "max" score over sentences) instead of cut at the
context ("truncate"). Thread-safe: jitted calls and numpy reads only.
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
from tpsearch_jax.search import ann, attribution, encoding, explain, fingerprint, index_files, query_text, topk
from tpsearch_jax.training.options import Options

MAX_K = 100


def check_request(sentences: Sequence[str], k: int, max_k: int = MAX_K, mode: str = "truncate") -> None:
  """Raises UserError naming the problem unless every sentence has text, 1 ≤ k ≤ max_k and ``mode`` is one of
  ``query_text.LONG_QUERY_MODES`` (no model work)."""
  if mode not in query_text.LONG_QUERY_MODES:
    raise user_errors.UserError(f"long-query mode must be one of {', '.join(query_text.LONG_QUERY_MODES)}, got "
                                f"{mode!r}")
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


@dataclasses.dataclass(frozen=True)
class Answer:
  """One query's answer: the text, what the model read of it (``query_text.reading``), the sentences scored (one
  unless ``mode`` splits it), the phrase spans [(start, end)] explained in each hit's "phrases", and the hits."""

  text: str
  mode: str
  reading: dict
  sentences: list[str]
  phrases: list[tuple[int, int]]
  hits: list[Hit]


def patch_of(options: Options) -> int:
  """The image backbone's patch (or output stride) in pixels: the occlusion block's smallest side."""
  backbone = options.model.backbone
  if backbone == "clip":
    return int(options.clip.patch_size)
  return 16 if backbone == "vit_bert" else 32


class Searcher:
  """``Searcher(INDEX)``: exactly the checkpoint that built the index (``workdir``: the run folder moved there),
  ready to search; ``fingerprint.FingerprintMismatch`` / ``index_files.BadIndex`` (one line saying how to fix it)
  otherwise.

  query_batch: sentences encoded per call (rounded up to the device count); 1 suits a server answering one query
  per request (a larger batch costs its full size even for one query), more suits batches of queries."""

  def __init__(self, index_dir: str, workdir: str | None = None, max_k: int = MAX_K, query_batch: int = 1,
               warm: bool = True):
    data = index_files.read_index(index_dir)
    self.index_dir, self.meta, self.paths = index_dir, data["meta"], data["paths"]
    self.embeddings, self.foreground = data["embeddings"], data["foreground"]
    self.root = self.meta.get("images_root") or os.path.commonpath(self.paths)
    run = fingerprint.load_pinned_run(self.meta, index_dir, workdir)
    self.workdir = workdir or self.meta["workdir"]
    self.run, self.mesh = run, run.mesh
    self.layout = (explain.Layout.from_json(self.meta["layout"]) if "layout" in self.meta
                   else explain.vector_layout(run.options, self.embeddings.shape[1],
                                              None if self.foreground is None else self.foreground.shape[1]))
    data = run.options.data
    self.context_length = int(data.context_length)
    self.tokenize = text_tokenizers.caption_tokenizer(data)
    self.image_size = tuple(int(v) for v in data.image_size)
    self.normalization = data.get("normalization", "clip")
    self.block_side = attribution.block_grid(self.image_size, patch_of(run.options))[0]
    self.query_batch = -(-max(1, query_batch) // self.mesh.size) * self.mesh.size
    self.max_k = max_k
    self.k_search = max(1, min(max_k, len(self.paths)))
    self._encoder = encoding.text_encoder(run.model, self.mesh)
    self.kind = self.meta.get("kind", "exact")
    if self.kind == "faiss":  # the approximate index (``ann``) answers; the exact vectors still explain
      self.ann = ann.read(os.path.join(index_dir, ann.ANN_FILE), self.meta["ann"])
      self.vectors = None
    else:
      self.ann = None
      self.vectors = topk.shard_vectors(self.embeddings, np.arange(len(self.paths)), mesh=self.mesh,
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
    """Sentences [Q] → float32 [Q, D] retrieval vectors, encoded ``query_batch`` at a time (one compiled shape)."""
    out = []
    for start in range(0, len(sentences), self.query_batch):
      chunk = list(sentences[start:start + self.query_batch])
      padded = chunk + [""] * (self.query_batch - len(chunk))
      vec = encoding.encode_texts(self.run.model, self.mesh, self.run.params, padded, self.context_length,
                                  encoder=self._encoder, tokenize=self.tokenize)
      out.append(vec[:len(chunk)])
    return np.concatenate(out)

  def pieces_of(self, text: str, mode: str) -> list[str]:
    """The texts encoded for one query: itself ("truncate"), else its sentences (itself when it has none)."""
    return [text] if mode == "truncate" else (query_text.sentences(text) or [text])

  def query_vectors(self, texts: Sequence[str], mode: str = "truncate") -> list[np.ndarray]:
    """Queries [T] → per query f32 [S, D]: S = 1 ("truncate"; "mean": the renormalised mean of its sentence
    vectors) or its S sentence vectors ("max"); every text of every query in one ``encode``."""
    pieces = [self.pieces_of(t, mode) for t in texts]
    flat = self.encode([p for ps in pieces for p in ps]) if texts else np.zeros((0, self.embeddings.shape[1]))
    out, at = [], 0
    for ps in pieces:
      vecs = flat[at:at + len(ps)]
      at += len(ps)
      if mode == "mean":
        mean = vecs.mean(axis=0)
        vecs = (mean / max(float(np.linalg.norm(mean)), 1e-12))[None]
      out.append(vecs)
    return out

  def score_rows(self, texts: Sequence[str], rows: Sequence[int], mode: str = "truncate") -> np.ndarray:
    """Queries [T] × index rows [K] → scores f32 [T, K] as ``search`` ranks them (max over sentences in "max")."""
    gallery = self.embeddings[np.asarray(rows, np.int64)]
    return np.stack([np.max(v @ gallery.T, axis=0) for v in self.query_vectors(texts, mode)])

  def _top(self, vectors: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query [S, D] vectors [T] → (scores, rows), T arrays [≤ k_search] each: a row's score is its best over S."""
    flat = np.concatenate(vectors)
    if self.ann is not None:
      scores, ids = ann.search(self.ann, flat, self.k_search)
    else:
      scores, ids = topk.search_batched(self.vectors, flat, self.k_search, query_batch=self.query_batch)
    out_s, out_i, at = [], [], 0
    for v in vectors:
      s, i = scores[at:at + len(v)], ids[at:at + len(v)]
      at += len(v)
      if len(v) > 1:  # the best score per row over the sentences' top lists is exact for the max-score top-k
        best = {}
        for row, score in zip(i.ravel(), s.ravel()):
          if row >= 0 and score > best.get(int(row), -np.inf):
            best[int(row)] = float(score)
        order = sorted(best, key=lambda r: (-best[r], r))[:self.k_search]
        s = np.asarray([[best[r] for r in order]], np.float32)
        i = np.asarray([order], np.int64)
      found = i[0] >= 0  # an approximate index may find fewer than k_search rows
      out_s.append(s[0][found])
      out_i.append(i[0][found])
    return out_s, out_i

  def answer(self, texts: Sequence[str], k: int = 10, mode: str = "truncate", phrases: bool = False) -> list[Answer]:
    """Top-min(k, n) hits per query, best first, each with its explanation (+ each phrase's contribution with
    ``phrases``), and what the model read of each query; 1 ≤ k ≤ ``max_k``."""
    check_request(texts, k, self.max_k, mode)
    if not texts:
      return []
    k = min(k, self.k_search)
    vectors = self.query_vectors(texts, mode)
    all_scores, all_ids = self._top(vectors)
    answers = []
    for text, vecs, srow, irow in zip(texts, vectors, all_scores, all_ids):
      srow, irow = srow[:k], irow[:k]
      best = np.argmax(vecs @ self.embeddings[irow].T, axis=0)  # the sentence each hit's score comes from
      why = [explain.explanation(vecs[b], self.embeddings[i][None], self.layout)[0] for b, i in zip(best, irow)]
      spans = []
      if phrases:
        spans, drops = attribution.phrase_drops(text, lambda ts, rows=irow: self.score_rows(ts, rows, mode))
        for w, ph in zip(why, attribution.phrase_json(text, spans, drops) if spans else [[] for _ in why]):
          w["phrases"] = ph
      pieces = self.pieces_of(text, mode)
      reading = query_text.reading(text, self.tokenize, self.context_length)
      if mode != "truncate":  # every sentence read on its own: dropped = words of sentences cut at the context
        each = [query_text.reading(p, self.tokenize, self.context_length) for p in pieces]
        reading = dict(reading, dropped=[w for r in each for w in r["dropped"]],
                       read=sum(r["read"] for r in each), dropped_from=None,
                       sentences=[{"text": p, "read": r["read"], "tokens": r["tokens"], "dropped": r["dropped"]}
                                  for p, r in zip(pieces, each)])
      hits = [Hit(r + 1, int(i), self.paths[i], self.relpath(int(i)), float(s), w)
              for r, (s, i, w) in enumerate(zip(srow, irow, why))]
      answers.append(Answer(text, mode, reading, pieces, spans, hits))
    return answers

  def search(self, sentences: Sequence[str], k: int = 10, mode: str = "truncate") -> list[list[Hit]]:
    """Top-min(k, n) hits per sentence, best first, each with its explanation; 1 ≤ k ≤ ``max_k``."""
    return [a.hits for a in self.answer(sentences, k, mode)]

  def occlusion(self, text: str, row: int, mode: str = "truncate") -> tuple[np.ndarray, int]:
    """Where in index row ``row``'s image the match with ``text`` comes from → (drops f32 [rows, cols], block side
    in pixels of the model's input): one forward of 1 + rows·cols images."""
    image = encoding.load_image(self.paths[row], self.image_size, self.normalization)
    vecs = self.query_vectors([text], mode)[0]

    def score_images(batch):
      emb = encoding.encode_arrays(self.run.model, self.mesh, self.run.params, batch)
      return np.max(vecs @ emb.T, axis=0)

    return attribution.occlusion_map(image, self.block_side, score_images), self.block_side

  def foreground_of(self, row: int) -> np.ndarray | None:
    """The stored foreground map float32 [gh·gw] of index row ``row`` (part models), else None."""
    return None if self.foreground is None else self.foreground[row].astype(np.float32)


def query(index_dir: str, sentences: Sequence[str], k: int = 10, workdir: str | None = None):
  """Top-k gallery images per sentence → list of [(absolute path, cosine)] lists (best first)."""
  check_request(sentences, k, max(k, MAX_K) if isinstance(k, int) else MAX_K)
  searcher = Searcher(index_dir, workdir=workdir, max_k=max(k, MAX_K), query_batch=min(len(sentences), 32),
                      warm=False)
  return [[(h.path, h.score) for h in hits] for hits in searcher.search(sentences, k)]
