"""``python -m tpsearch_jax.search index|query``: search your own images with a trained model.

    python -m tpsearch_jax.search index --workdir=RUN --images=DIR --index=INDEX_DIR
    python -m tpsearch_jax.search query --index=INDEX_DIR --text="a woman in a red coat with a black backpack" --k=10

``index`` encodes every image under ``--images`` (recursively; jpg/jpeg/png/bmp/webp) with the run's model
(``RUN/config.json`` + its best, else last, checkpoint). ``query`` encodes each sentence and prints the top-k images
with cosine scores (exact top-k over the index sharded on all devices; ``--html`` also writes a page of thumbnails).
Neither command imports TensorFlow.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Sequence

from absl import app, flags

from tpsearch_jax.search.library import build, query

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run folder holding config.json and checkpoints (index).")
flags.DEFINE_enum("checkpoint", "auto", ["auto", "best", "last"], "Which checkpoint of --workdir to use (index).")
flags.DEFINE_string("images", None, "Folder of images to index, searched recursively (index).")
flags.DEFINE_string("index", None, "Index folder: written by `index`, read by `query`.")
flags.DEFINE_integer("batch_size", 64, "Images per encoding batch (rounded up to a multiple of the device count).")
flags.DEFINE_bool("skip_bad", False, "Skip unreadable images (counted and logged) instead of stopping (index).")
flags.DEFINE_multi_string("text", [], "Query sentence; repeat for several (query).")
flags.DEFINE_string("text_file", None, "File with one query sentence per line (query).")
flags.DEFINE_integer("k", 10, "Results per query (query).")
flags.DEFINE_string("html", None, "Also write the results as an HTML page with thumbnails (query).")


def write_html(path: str, sentences: Sequence[str], results) -> None:
  """A static page: one row of thumbnails (with scores) per query."""
  rows = []
  for sentence, hits in zip(sentences, results):
    cells = "".join(f'<figure><img src="file://{html.escape(p)}" height="192"><figcaption>{s:.3f}<br>'
                    f"{html.escape(os.path.basename(p))}</figcaption></figure>" for p, s in hits)
    rows.append(f"<h3>{html.escape(sentence)}</h3><div style='display:flex;gap:6px'>{cells}</div>")
  with open(path, "w") as f:
    f.write("<!doctype html><meta charset='utf-8'><title>tpsearch_jax results</title>" + "".join(rows))


def main(argv) -> int:
  if len(argv) != 2 or argv[1] not in ("index", "query"):
    raise app.UsageError("usage: python -m tpsearch_jax.search index|query [flags]")
  if not FLAGS.index:
    raise app.UsageError("--index is required")
  if argv[1] == "index":
    if not FLAGS.workdir or not FLAGS.images:
      raise app.UsageError("index needs --workdir and --images")
    build(FLAGS.workdir, FLAGS.images, FLAGS.index, FLAGS.checkpoint, FLAGS.batch_size, FLAGS.skip_bad)
    return 0
  sentences = list(FLAGS.text)
  if FLAGS.text_file:
    with open(FLAGS.text_file) as f:
      sentences += [line.strip() for line in f if line.strip()]
  if not sentences:
    raise app.UsageError("query needs --text (repeatable) or --text_file")
  results = query(FLAGS.index, sentences, FLAGS.k)
  for sentence, hits in zip(sentences, results):
    print(f"\n{sentence}")
    for rank, (p, s) in enumerate(hits, 1):
      print(f"  {rank:3d}  {s:.4f}  {p}")
  if FLAGS.html:
    write_html(FLAGS.html, sentences, results)
    print(f"\nwrote {FLAGS.html}")
  sys.stdout.flush()
  return 0


if __name__ == "__main__":
  app.run(main)
