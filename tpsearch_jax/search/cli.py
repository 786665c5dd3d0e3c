"""``python -m tpsearch_jax.search index|query|serve``: search your own images with a trained model.

    python -m tpsearch_jax.search index --workdir=RUN --images=DIR --index=INDEX_DIR
    python -m tpsearch_jax.search query --index=INDEX_DIR --text="a woman in a red coat" --k=10 --explain \\
        --grid=/tmp/grid.png
    python -m tpsearch_jax.search serve --index=INDEX_DIR [--host=127.0.0.1] [--port=8080]

``index`` encodes the images under ``--images`` (recursively; jpg/jpeg/png/bmp/webp) with the run's model
(``RUN/config.json`` + its best, else last, checkpoint), with a progress bar; re-running it encodes only new or changed
files. The index pins that checkpoint (config hash, checkpoint folder + step, vector width, checksums): ``query`` and
``serve`` load exactly it (``--workdir``: the run folder moved there) and refuse anything else. ``query`` prints the
top-k images per sentence (``--text``, repeatable, and/or ``--queries`` FILE, one a line) with cosine scores;
``--explain`` adds the score split into its pieces, ``--grid`` writes a PNG of the results, ``--html`` a page of
thumbnails. ``serve`` starts the local search page (``server.py``). None imports TensorFlow.

A mistake the user can fix (a flag, a file, a mismatched run) ends with one line on stderr and exit status 2
(``user_errors``); ``--verbose`` or ``--pdb`` shows the traceback instead.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Sequence

from absl import app, flags
from PIL import Image

from tpsearch_jax import user_errors
from tpsearch_jax.search import explain, grid, library, server
from tpsearch_jax.search.searcher import MAX_K, Searcher, check_request

PROGRAM = "python -m tpsearch_jax.search"
COMMANDS = ("index", "query", "serve")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run folder holding config.json and checkpoints (index; query/serve: "
                    "optional, the folder the run that built the index has moved to).")
flags.DEFINE_enum("checkpoint", "auto", ["auto", "best", "last"], "Which checkpoint of --workdir to use (index).")
flags.DEFINE_string("images", None, "Folder of images to index, searched recursively (index).")
flags.DEFINE_string("index", None, "Index folder: written by `index`, read by `query` and `serve`.")
flags.DEFINE_integer("batch_size", 64, "Images per encoding batch (rounded up to a multiple of the device count).")
flags.DEFINE_bool("skip_bad", False, "Skip unreadable images (listed, and kept in INDEX/skipped.json) instead of "
                  "stopping (index).")
flags.DEFINE_multi_string("text", [], "Query sentence; repeat for several (query).")
flags.DEFINE_string("queries", None, "File with one query sentence per line, searched in one batch (query).")
flags.DEFINE_string("text_file", None, "Same as --queries.")
flags.DEFINE_integer("k", 10, "Results per query (query).")
flags.DEFINE_bool("explain", False, "Print each result's similarity split into pieces; part models: stripes (query).")
flags.DEFINE_string("grid", None, "Write a PNG of the top-k per query to this file (query).")
flags.DEFINE_string("html", None, "Also write the results as an HTML page with thumbnails (query).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (serve); 0.0.0.0 exposes the page to the network.")
flags.DEFINE_integer("port", 8080, "Port (serve); 0 picks a free one.")
flags.DEFINE_bool("verbose", False, "Show the traceback of an error instead of its one-line message.")


def write_html(path: str, sentences: Sequence[str], results) -> None:
  """A static page: one row of thumbnails (with scores) per query; results: [[(path, score)]]."""
  rows = []
  for sentence, hits in zip(sentences, results):
    cells = "".join(f'<figure><img src="file://{html.escape(p)}" height="192"><figcaption>{s:.3f}<br>'
                    f"{html.escape(os.path.basename(p))}</figcaption></figure>" for p, s in hits)
    rows.append(f"<h3>{html.escape(sentence)}</h3><div style='display:flex;gap:6px'>{cells}</div>")
  with open(path, "w") as f:
    f.write("<!doctype html><meta charset='utf-8'><title>tpsearch_jax results</title>" + "".join(rows))


def explain_lines(hit, layout: explain.Layout) -> list[str]:
  """The explanation of one hit as indented text lines: weighted pieces, then (part models) each stripe."""
  ex = hit.explanation
  terms = [f"{p['name']} {p['cosine']:+.3f}×{p['weight']:g}" for p in ex["pieces"]
           if not p["name"].startswith(("coarse_", "part_"))]
  if layout.has_parts:
    terms.append(f"coarse(mean) {ex['coarse_mean']:+.3f}" if ex.get("coarse_mean") is not None else "")
    stripes = " ".join(f"{s['cosine']:+.2f}" for s in ex["stripes"])
    terms.append(f"stripes top→bottom [{stripes}]")
  total = sum(w for w in layout.weights)
  return [f"       = Σ w·cos / {total:g}: " + "; ".join(t for t in terms if t)]


def grid_rows(searcher: Searcher, sentences: Sequence[str], results, with_overlay: bool):
  """Results → ``grid.render_grid`` rows (the part model's overlay beside each image with ``with_overlay``)."""
  rows = []
  for sentence, hits in zip(sentences, results):
    cells = []
    for h in hits:
      side = None
      if with_overlay and searcher.layout.has_parts:
        with Image.open(h.path) as im:
          side = explain.overlay(im, searcher.foreground_of(h.id), searcher.layout,
                                 [s["cosine"] for s in h.explanation["stripes"]])
      cells.append(grid.Cell(h.path, h.rank, h.score, side=side, label=os.path.basename(h.path)))
    rows.append((sentence, cells))
  return rows


def run_query(sentences: Sequence[str]) -> int:
  searcher = Searcher(FLAGS.index, workdir=FLAGS.workdir, max_k=max(FLAGS.k, MAX_K),
                      query_batch=min(len(sentences), 32))
  results = searcher.search(sentences, FLAGS.k)
  for sentence, hits in zip(sentences, results):
    print(f"\n{sentence}")
    for h in hits:
      print(f"  {h.rank:3d}  {h.score:.4f}  {h.path}")
      if FLAGS.explain:
        print("\n".join(explain_lines(h, searcher.layout)))
  if FLAGS.grid:
    grid.render_grid(grid_rows(searcher, sentences, results, FLAGS.explain)).save(FLAGS.grid)
    print(f"\nwrote {FLAGS.grid}")
  if FLAGS.html:
    write_html(FLAGS.html, sentences, [[(h.path, h.score) for h in hits] for hits in results])
    print(f"\nwrote {FLAGS.html}")
  sys.stdout.flush()
  return 0


def read_sentences() -> list[str]:
  """--text (each must have text) + the non-blank lines of --queries / --text_file; UserError naming the flag."""
  sentences = list(FLAGS.text)
  for i, text in enumerate(sentences):
    if not text.strip():
      raise user_errors.UserError(f"--text number {i + 1} is empty: pass a description of the person, e.g. "
                                  "--text=\"a woman in a red coat\"")
  for flag in ("queries", "text_file"):
    name = FLAGS[flag].value
    if name:
      with open(name, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
      if not lines:
        raise user_errors.UserError(f"--{flag}={name} has no sentences: write one query a line")
      sentences += lines
  if not sentences:
    raise user_errors.UserError("query needs --text=SENTENCE (repeatable) or --queries=FILE")
  return sentences


def run_command(argv) -> int:
  """The command of argv[1], its flags checked before any model work."""
  if len(argv) != 2 or argv[1] not in COMMANDS:
    given = argv[1] if len(argv) > 1 else ""
    raise user_errors.UserError(f"usage: {PROGRAM} {'|'.join(COMMANDS)} [flags]; got {' '.join(argv[1:])!r}"
                                + user_errors.nearest(given, COMMANDS))
  if not FLAGS.index:
    raise user_errors.UserError(f"{argv[1]} needs --index=INDEX_DIR")
  if argv[1] == "index":
    if not FLAGS.workdir or not FLAGS.images:
      raise user_errors.UserError("index needs --workdir=RUN and --images=DIR")
    if FLAGS.batch_size < 1:
      raise user_errors.UserError(f"--batch_size must be at least 1, got {FLAGS.batch_size}")
    meta = library.build(FLAGS.workdir, FLAGS.images, FLAGS.index, FLAGS.checkpoint, FLAGS.batch_size,
                         FLAGS.skip_bad, progress=True)
    for path, error in meta["skipped"]:
      print(f"skipped unreadable {path!r}: {error}")
    print(f"indexed {meta['num_images']} images ({meta['num_encoded']} encoded now, {len(meta['skipped'])} skipped) "
          f"into {FLAGS.index}")
    return 0
  library.read_meta(FLAGS.index)  # a missing or older-format index is refused before the model loads
  if argv[1] == "serve":
    if not 0 <= FLAGS.port <= 65535:
      raise user_errors.UserError(f"--port must be between 0 (any free port) and 65535, got {FLAGS.port}")
    server.serve(FLAGS.index, FLAGS.host, FLAGS.port, workdir=FLAGS.workdir)
    return 0
  if FLAGS.k < 1:
    raise user_errors.UserError(f"--k must be at least 1, got {FLAGS.k}")
  sentences = read_sentences()
  check_request(sentences, FLAGS.k, max(FLAGS.k, MAX_K))
  return run_query(sentences)


def main(argv) -> int:
  verbose = FLAGS.verbose or FLAGS["pdb_post_mortem"].value
  return user_errors.exit_on_user_error(lambda: run_command(argv), program=PROGRAM, verbose=verbose)


def parse_flags(argv):
  """absl's flag parsing with a bad flag reported in one line (exit status 2) instead of absl's two."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"{PROGRAM}: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
