"""``python -m tpsearch_jax.search index|query|serve``: search your own images with a trained model.

    python -m tpsearch_jax.search index --workdir=RUN --images=DIR --index=INDEX_DIR
    python -m tpsearch_jax.search index --workdir=RUN --dataset_root=DATA --split=test --index=INDEX_DIR
    python -m tpsearch_jax.search query --index=INDEX_DIR --text="a woman in a red coat" --k=10 --explain \\
        --grid=/tmp/grid.png [--long=truncate|mean|max] [--json=OUT.json]
    python -m tpsearch_jax.search query --index=INDEX_DIR --queries=split     # R1/R5/R10/mAP of the split
    python -m tpsearch_jax.search serve --index=INDEX_DIR [--host=127.0.0.1] [--port=8080]

``index`` encodes the images under ``--images`` (recursively; jpg/jpeg/png/bmp/webp) with the run's model
(``RUN/config.json`` + its best, else last, checkpoint), with a progress bar; re-running it encodes only new or changed
files; with ``--dataset_root`` + ``--split`` it indexes exactly that split's images (any benchmark format the
readers know, and synthetic_pedes). Every file is decoded first: without ``--skip_bad`` all bad ones are listed in
one error before anything is encoded. The index pins that checkpoint (config hash, checkpoint folder + step, vector width, checksums): ``query`` and
``serve`` load exactly it (``--workdir``: the run folder moved there) and refuse anything else. ``query`` prints the
top-k images per sentence (``--text``, repeatable, and/or ``--queries`` FILE, one a line) with cosine scores;
each query's line says how many tokens the model read and which words it dropped (past its context; ``--long=mean|max``
reads a long query sentence by sentence instead). ``--explain`` adds each phrase's contribution (the score drop
without it) and the score split into its pieces, ``--grid`` writes a PNG of the results (with ``--explain``: the
occlusion map beside each image; part models: the foreground map and stripes), ``--html`` a page of thumbnails,
``--json`` everything as JSON. ``--queries=split`` scores the captions of the split the index was built from and
prints R1/R5/R10/mAP as ``--mode=eval`` does. ``serve`` starts the local search page (``server.py``). None imports TensorFlow.

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

from tpsearch_jax import cli_help, user_errors
from tpsearch_jax.search import attribution, explain, grid, index_files, indexing, query_text, server, split
from tpsearch_jax.search.searcher import MAX_K, Searcher, check_request

PROGRAM = "python -m tpsearch_jax.search"
COMMANDS = ("index", "query", "serve")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run folder holding config.json and checkpoints (index; query/serve: "
                    "optional, the folder the run that built the index has moved to).")
flags.DEFINE_enum("checkpoint", "auto", ["auto", "best", "last"], "Which checkpoint of --workdir to use (index).")
flags.DEFINE_string("images", None, "Folder of images to index, searched recursively (index).")
flags.DEFINE_string("dataset_root", None, "Dataset folder (imgs/ + annotation JSON) whose --split to index (index).")
flags.DEFINE_string("dataset", None, "Its format (cuhk_pedes, icfg_pedes, rstp_reid, synthetic_pedes); default: "
                    "recognised from the annotation file (index).")
flags.DEFINE_enum("kind", "exact", ["exact", "faiss"], "Index kind: 'exact' (brute-force top-k) or 'faiss' (an "
                  "approximate FAISS index beside the same vectors; for galleries past about a million images) (index).")
flags.DEFINE_string("faiss_factory", None, "FAISS factory string (index --kind=faiss); default an inverted file "
                    "'IVF<≈4·√n>,Flat'; 'HNSW32' a graph.")
flags.DEFINE_integer("faiss_probe", None, "Cells probed (IVF nprobe, default 32) or graph breadth (HNSW efSearch, "
                     "default 128) per query (index --kind=faiss).")
flags.DEFINE_enum("split", None, list(split.EVAL_SPLITS), "The split of --dataset_root to index (index).")
flags.DEFINE_string("index", None, "Index folder: written by `index`, read by `query` and `serve`.")
flags.DEFINE_integer("batch_size", 64, "Images per encoding batch (rounded up to a multiple of the device count).")
flags.DEFINE_bool("skip_bad", False, "Skip unreadable images (listed, and kept in INDEX/skipped.json) instead of "
                  "stopping (index).")
flags.DEFINE_multi_string("text", [], "Query sentence; repeat for several (query).")
flags.DEFINE_string("queries", None, "File with one query sentence per line, searched in one batch; 'split': the "
                    "captions of the split the index was built from, with R1/R5/R10/mAP (query).")
flags.DEFINE_string("text_file", None, "Same as --queries.")
flags.DEFINE_integer("k", 10, "Results per query (query).")
flags.DEFINE_bool("explain", False, "Print each result's similarity split into pieces; part models: stripes (query).")
flags.DEFINE_string("grid", None, "Write a PNG of the top-k per query to this file (query).")
flags.DEFINE_string("html", None, "Also write the results as an HTML page with thumbnails (query).")
flags.DEFINE_string("json", None, "Also write the answers (read/dropped words, hits, explanations) as JSON (query).")
flags.DEFINE_enum("long", "truncate", list(query_text.LONG_QUERY_MODES), "A query longer than the model reads: "
                  "'truncate' cuts it at the context; 'mean' / 'max' encode it sentence by sentence and combine the "
                  "sentence vectors (mean) or scores (max) (query).")
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


def reading_line(answer) -> str:
  """What the model read of one query, as one indented line."""
  r = answer.reading
  line = f"  [read {r['read']} of {r['tokens']} tokens, context {r['context_length']}"
  if len(answer.sentences) > 1:
    line += f"; {len(answer.sentences)} sentences, {answer.mode}"
  return line + (f"; dropped: {' '.join(r['dropped'])}]" if r["dropped"] else "]")


def explain_lines(hit, layout: explain.Layout) -> list[str]:
  """The explanation of one hit as indented text lines: each phrase's score drop, then (several pieces) the
  weighted pieces and (part models) each stripe."""
  ex, lines = hit.explanation, []
  if ex.get("phrases"):
    lines.append("       phrases (score drop without): " + "; ".join(f"{p['text']!r} {p['drop']:+.3f}"
                                                               for p in ex["phrases"]))
  if len(layout.names) == 1:
    return lines
  terms = [f"{p['name']} {p['cosine']:+.3f}×{p['weight']:g}" for p in ex["pieces"]
           if not p["name"].startswith(("coarse_", "part_"))]
  if layout.has_parts:
    terms.append(f"coarse(mean) {ex['coarse_mean']:+.3f}" if ex.get("coarse_mean") is not None else "")
    stripes = " ".join(f"{s['cosine']:+.2f}" for s in ex["stripes"])
    terms.append(f"stripes top→bottom [{stripes}]")
  total = sum(w for w in layout.weights)
  return lines + [f"       = Σ w·cos / {total:g}: " + "; ".join(t for t in terms if t)]


def grid_rows(searcher: Searcher, answers, with_overlay: bool):
  """Answers → ``grid.render_grid`` rows; ``with_overlay``: beside each image the part model's foreground map and
  stripes, else the query's occlusion map."""
  rows = []
  for a in answers:
    cells = []
    for h in a.hits:
      side = None
      if with_overlay:
        with Image.open(h.path) as im:
          if searcher.layout.has_parts:
            side = explain.overlay(im, searcher.foreground_of(h.id), searcher.layout,
                                   [s["cosine"] for s in h.explanation["stripes"]])
          else:
            drops, block = searcher.occlusion(a.text, h.id, a.mode)
            side = attribution.draw_occlusion(im, drops, block, searcher.image_size)
      cells.append(grid.Cell(h.path, h.rank, h.score, side=side, label=os.path.basename(h.path)))
    rows.append((a.text, cells))
  return rows


def answer_json(a) -> dict:
  """One answer as JSON: the query, what was read and dropped, its phrases and its hits with explanations."""
  return {"query": a.text, "long": a.mode, **a.reading, "sentences": a.sentences,
          "phrases": [{"text": a.text[s:e], "start": s, "end": e} for s, e in a.phrases],
          "results": [{"rank": h.rank, "path": h.path, "score": round(h.score, 4), "explanation": h.explanation}
                      for h in a.hits]}


def run_query(sentences: Sequence[str]) -> int:
  searcher = Searcher(FLAGS.index, workdir=FLAGS.workdir, max_k=max(FLAGS.k, MAX_K),
                      query_batch=min(len(sentences), 32))
  answers = searcher.answer(sentences, FLAGS.k, FLAGS.long, phrases=FLAGS.explain)
  for a in answers:
    print(f"\n{a.text}\n{reading_line(a)}")
    for h in a.hits:
      print(f"  {h.rank:3d}  {h.score:.4f}  {h.path}")
      if FLAGS.explain:
        print("\n".join(explain_lines(h, searcher.layout)))
  if FLAGS.grid:
    grid.render_grid(grid_rows(searcher, answers, FLAGS.explain)).save(FLAGS.grid)
    print(f"\nwrote {FLAGS.grid}")
  if FLAGS.html:
    write_html(FLAGS.html, sentences, [[(h.path, h.score) for h in a.hits] for a in answers])
    print(f"\nwrote {FLAGS.html}")
  if FLAGS.json:
    split.write_json(FLAGS.json, [answer_json(a) for a in answers])
    print(f"\nwrote {FLAGS.json}")
  sys.stdout.flush()
  return 0


def run_split_queries() -> int:
  """--queries=split: the split's captions against the index → R1/R5/R10/mAP (and mINP), as evaluation reports."""
  the_split = split.split_of_index(index_files.read_meta(FLAGS.index))
  searcher = Searcher(FLAGS.index, workdir=FLAGS.workdir, query_batch=32, warm=False)
  queries = searcher.query_vectors(the_split.captions, FLAGS.long)
  result = split.split_metrics(the_split, searcher.paths, searcher.embeddings, queries)
  print(f"{len(the_split.captions)} {the_split.name} captions against {len(searcher.paths)} images ({FLAGS.long}): "
        + "  ".join(f"{k} {v:.2f}" for k, v in result.items()))
  if FLAGS.json:
    split.write_json(FLAGS.json, dict(result, split=the_split.name, num_queries=len(the_split.captions),
                                      num_images=len(searcher.paths), long=FLAGS.long))
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
    if name and not os.path.isfile(name):
      raise user_errors.UserError(f"--{flag}={name}: no such file (--queries=split: the captions of the index's split)")
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
    return run_index()
  index_files.read_meta(FLAGS.index)  # a missing or older-format index is refused before the model loads
  if argv[1] == "serve":
    if not 0 <= FLAGS.port <= 65535:
      raise user_errors.UserError(f"--port must be between 0 (any free port) and 65535, got {FLAGS.port}")
    server.serve(FLAGS.index, FLAGS.host, FLAGS.port, workdir=FLAGS.workdir)
    return 0
  if FLAGS.k < 1:
    raise user_errors.UserError(f"--k must be at least 1, got {FLAGS.k}")
  if FLAGS.queries == "split":
    return run_split_queries()
  sentences = read_sentences()
  check_request(sentences, FLAGS.k, max(FLAGS.k, MAX_K), FLAGS.long)
  return run_query(sentences)


def run_index() -> int:
  """``index``: a folder (--images) or a dataset split (--dataset_root + --split) → the index folder."""
  if not FLAGS.workdir or bool(FLAGS.images) == bool(FLAGS.dataset_root):
    raise user_errors.UserError("index needs --workdir=RUN and either --images=DIR or --dataset_root=DIR "
                                "--split=val|test")
  if FLAGS.dataset_root and not FLAGS.split:
    raise user_errors.UserError(f"--dataset_root={FLAGS.dataset_root} needs --split=val|test (the images to index)")
  if FLAGS.batch_size < 1:
    raise user_errors.UserError(f"--batch_size must be at least 1, got {FLAGS.batch_size}")
  if FLAGS.faiss_probe is not None and FLAGS.faiss_probe < 1:
    raise user_errors.UserError(f"--faiss_probe must be at least 1, got {FLAGS.faiss_probe}")
  kind = {"kind": FLAGS.kind, "faiss_factory": FLAGS.faiss_factory, "faiss_probe": FLAGS.faiss_probe}
  if FLAGS.dataset_root:
    name, the_split = split.read_split(FLAGS.dataset_root, FLAGS.split, FLAGS.dataset)
    print(f"{name} {FLAGS.split} split: {len(the_split.image_paths)} images, {len(the_split.captions)} captions")
    meta = indexing.build(FLAGS.workdir, os.path.join(os.path.abspath(FLAGS.dataset_root), "imgs"), FLAGS.index,
                          FLAGS.checkpoint, FLAGS.batch_size, FLAGS.skip_bad, progress=True,
                          paths=the_split.image_paths, dataset=split.dataset_record(name, FLAGS.dataset_root,
                                                                                    FLAGS.split), **kind)
  else:
    meta = indexing.build(FLAGS.workdir, FLAGS.images, FLAGS.index, FLAGS.checkpoint, FLAGS.batch_size,
                          FLAGS.skip_bad, progress=True, **kind)
  for path, error in meta["skipped"]:
    print(f"skipped unreadable {path!r}: {error}")
  print(f"indexed {meta['num_images']} images ({meta['num_encoded']} encoded now, {len(meta['skipped'])} skipped) "
        f"into {FLAGS.index}" + (f" (faiss {meta['ann']['factory']}, probe {meta['ann']['probe']})"
                                 if meta.get("ann") else ""))
  return 0


def main(argv) -> int:
  verbose = FLAGS.verbose or FLAGS["pdb_post_mortem"].value
  cli_help.quiet_libraries(FLAGS.verbose)
  return user_errors.exit_on_user_error(lambda: run_command(argv), program=PROGRAM, verbose=verbose)


def parse_flags(argv):
  """absl's flag parsing with a bad flag reported in one line (exit status 2) instead of absl's two."""
  if cli_help.wants_help(argv):
    cli_help.exit_with_help(cli_help.command_help(argv, __doc__, __name__, COMMANDS))
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"{PROGRAM}: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
