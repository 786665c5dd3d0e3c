"""The approximate index (``index --kind=faiss``): a FAISS index over the same retrieval vectors, for large galleries.

An index folder of kind "faiss" is the exact folder (embeddings.npy, paths.json, … with the same fingerprint and
checksums) plus ``ann.faiss``, checksummed like the others, and index.json's "ann" entry {"factory", "probe",
"num_rows"}. The default structure is an inverted file over the exact vectors ("IVF<nlist>,Flat", nlist ≈ 2·√n,
inner product; k-means of 10 iterations on at most 40 vectors per cell): a query scans the ``probe`` cells whose centroids are nearest, so recall depends on ``probe``
(benchmarks/search_ann.py measures it against the exact index; docs/search.md gives the numbers). "HNSW32" (a graph)
is the other documented choice. Scores are inner products of the stored (L2-normalised) vectors: cosines, as the
exact index returns. faiss is imported here only, when an index of this kind is built or read.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from tpsearch_jax import user_errors

ANN_FILE = "ann.faiss"
KINDS = ("exact", "faiss")
DEFAULT_PROBE = {"IVF": 32, "HNSW": 128}  # nprobe of an inverted file, efSearch of a graph
TRAIN_PER_CELL = 40  # vectors per IVF cell the centroids are trained on (k-means)
KMEANS_ITERATIONS = 10


def _faiss():
  """The faiss module, or a UserError saying how to install it (an optional dependency: only --kind=faiss needs it)."""
  try:
    import faiss  # pylint: disable=import-outside-toplevel  (optional heavy dependency, only for --kind=faiss)
  except ImportError as e:
    raise user_errors.UserError("--kind=faiss needs the faiss-cpu package: pip install 'faiss-cpu>=1.8,<2'") from e
  return faiss


def default_factory(n: int) -> str:
  """The FAISS factory string for n vectors: an inverted file of ≈ 2·√n cells (at least 1, at most n / 39)."""
  nlist = int(max(1, min(2 * np.sqrt(n), n // 39)))
  return f"IVF{nlist},Flat"


def build(vectors: np.ndarray, factory: str | None = None, probe: int | None = None, seed: int = 0):
  """L2-normalised vectors f32 [n, D] → (a FAISS inner-product index holding them as ids 0..n−1, its "ann" record)."""
  faiss = _faiss()
  vectors = np.ascontiguousarray(vectors, np.float32)
  n, d = vectors.shape
  factory = factory or default_factory(n)
  index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
  if not index.is_trained:
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter, ivf.cp.seed = KMEANS_ITERATIONS, seed
    size = TRAIN_PER_CELL * ivf.nlist
    sample = vectors if n <= size else vectors[np.sort(np.random.default_rng(seed).choice(n, size, replace=False))]
    index.train(sample)
  for start in range(0, n, 200_000):  # chunks bound the temporary memory of the add
    index.add(vectors[start:start + 200_000])
  kind = "HNSW" if factory.startswith("HNSW") else "IVF"
  record = {"factory": factory, "probe": int(probe or DEFAULT_PROBE[kind]), "num_rows": int(n)}
  set_probe(index, record["probe"])
  logging.info("FAISS index %s over %d vectors of width %d (probe %d)", factory, n, d, record["probe"])
  return index, record


def set_probe(index, probe: int) -> None:
  """How much of the index a query visits: nprobe (inverted files) or efSearch (HNSW graphs)."""
  if hasattr(index, "hnsw"):
    index.hnsw.efSearch = int(probe)
  else:
    _faiss().extract_index_ivf(index).nprobe = int(probe)


def serialize(index) -> bytes:
  """The FAISS index as the bytes of ``ann.faiss``."""
  return _faiss().serialize_index(index).tobytes()


def read(path: str, record: dict):
  """``ann.faiss`` + its index.json record → the FAISS index, probe set."""
  index = _faiss().read_index(path)
  if index.ntotal != int(record["num_rows"]):
    raise ValueError(f"{path} holds {index.ntotal} vectors, index.json records {record['num_rows']}")
  set_probe(index, int(record["probe"]))
  return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """queries f32 [Q, D] (L2-normalised) → (scores f32 [Q, k] descending, rows int64 [Q, k]; −1 where fewer)."""
  scores, rows = index.search(np.ascontiguousarray(queries, np.float32), int(k))
  return scores.astype(np.float32), rows.astype(np.int64)


def version() -> str:
  return _faiss().__version__


def threads(n: int | None = None) -> int:
  """Sets (when given) and returns FAISS's OpenMP thread count."""
  faiss = _faiss()
  if n:
    faiss.omp_set_num_threads(int(n))
  return faiss.omp_get_max_threads()

