"""Search your own images with a trained model: ``python -m tpsearch_jax.search index|query|serve`` (``cli``).

Modules, one responsibility each:
  image_files   which files of a gallery folder are images; their (size, mtime)
  encoding      image files and sentences → retrieval vectors with a run's model
  fingerprint   the run, config and checkpoint that built an index; loading exactly that one again
  index_files   the index folder's files (format 3): read back with checksums checked, written safely
  indexing      build (incrementally) an index folder from a gallery and a run
  topk          the sharded brute-force top-k over the index's vectors on the devices
  ann           the approximate FAISS index of ``--kind=faiss``
  split         a benchmark split as a gallery + queries, scored as evaluation does
  searcher      an index and its run loaded once, answering queries (``Searcher``, ``query``)
  query_text, explain, attribution, grid, page, server: what a query read, why an image matched, the result pictures
  and the local search page.
"""
