"""Building an index folder: encode the new or changed images of a gallery with a run and write the folder.

Re-indexing with the same run (same fingerprint, same images root) encodes only the files whose (size, mtime) changed;
another run encodes every image again. Images go through the evaluation pipeline's preprocessing (``encoding``), so
an index ranks as evaluation measured. The folder's files: ``index_files``; the run's fingerprint: ``fingerprint``;
the approximate index of ``kind="faiss"``: ``ann``. No TensorFlow.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging

from tpsearch_jax import user_errors
from tpsearch_jax.search import ann, encoding, explain, fingerprint, image_files, index_files
from tpsearch_jax.search.index_files import (INDEX_EMB, INDEX_FOREGROUND, INDEX_META, INDEX_PATHS, INDEX_SKIPPED,
                                             INDEX_STATS)
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import runs


def reusable_rows(index_dir: str, fp: dict, root: str) -> dict:
  """{path: (stats row, embedding row, foreground row | None)} of an existing index built by the same run, else {}."""
  if not os.path.isfile(os.path.join(index_dir, INDEX_META)):
    return {}
  try:
    old = index_files.read_index(index_dir)
  except (index_files.BadIndex, OSError, ValueError) as e:
    logging.info("%s cannot be reused (%s): encoding every image again", index_dir, e)
    return {}
  if (not fingerprint.same_model(old["meta"]["fingerprint"], fp) or old["stats"] is None
      or old["meta"].get("images_root") != root):
    logging.info("%s was built by another run or from another folder: encoding every image again", index_dir)
    return {}
  fg = old["foreground"]
  return {p: (old["stats"][i], old["embeddings"][i], None if fg is None else fg[i]) for i, p in enumerate(old["paths"])}


def build(workdir: str, images: str, index_dir: str, checkpoint: str = "auto", batch_size: int = 64,
          skip_bad: bool = False, progress: bool = False, paths: Sequence[str] | None = None,
          dataset: dict | None = None, kind: str = "exact", faiss_factory: str | None = None,
          faiss_probe: int | None = None) -> dict:
  """Encodes the new or changed images under ``images`` (or exactly ``paths`` [n] inside it: a dataset split,
  recorded as ``dataset`` {"name", "root", "split"}) with the run in ``workdir`` (all of them when the index was
  built by another run) and writes the index folder; ``kind="faiss"`` adds the approximate index (``ann``) over
  the same vectors. Returns its metadata (+ "num_encoded", "skipped")."""
  if kind not in ann.KINDS:
    raise user_errors.UserError(f"--kind must be one of {', '.join(ann.KINDS)}, got {kind!r}")
  run = runs.load_run(workdir, checkpoint)
  fp, root = fingerprint.run_fingerprint(run, workdir, fingerprint.text_dim(run)), os.path.abspath(images)
  if paths is None:
    paths = image_files.find_images(root)
  else:
    paths = sorted(dict.fromkeys(os.path.abspath(p) for p in paths))
  stats = image_files.file_stats(paths)
  old = reusable_rows(index_dir, fp, root)
  todo = [p for p, st in zip(paths, stats) if p not in old or not np.array_equal(old[p][0], st)]
  data = run.options.data
  image_size = tuple(data.image_size)
  logging.info("%d images under %s: %d to encode, %d already in the index", len(paths), root, len(todo),
               len(paths) - len(todo))
  normalization = data.get("normalization", "clip")  # runs from before the field: CLIP's
  new_emb, new_fg, kept, bad = (encoding.encode_images(run.model, run.mesh, run.params, todo, image_size, batch_size,
                                                       skip_bad, progress, normalization)
                                if todo else (None, None, [], []))
  fresh, changed = {p: i for i, p in enumerate(kept)}, set(todo)
  rows, emb, fg = [], [], []
  for i, p in enumerate(paths):
    if p in fresh:
      emb.append(new_emb[fresh[p]])
      fg.append(None if new_fg is None else new_fg[fresh[p]])
    elif p in old and p not in changed:
      emb.append(old[p][1])
      fg.append(old[p][2])
    else:
      continue
    rows.append(i)
  if not rows:
    raise user_errors.UserError(f"no readable images to index under {root}")
  os.makedirs(index_dir, exist_ok=True)
  layout = explain.vector_layout(run.options, int(emb[0].shape[0]), None if fg[0] is None else len(fg[0]))
  index_files.save_array(index_dir, INDEX_EMB, np.stack(emb).astype(np.float16))
  index_files.save_array(index_dir, INDEX_STATS, stats[rows])
  index_files.save_json(index_dir, INDEX_PATHS, [paths[i] for i in rows])
  index_files.save_json(index_dir, INDEX_SKIPPED, [list(b) for b in bad])
  written, ann_record = [INDEX_EMB, INDEX_STATS, INDEX_PATHS], None
  if layout.has_parts:
    index_files.save_array(index_dir, INDEX_FOREGROUND, np.stack(fg).astype(np.float16))
    written.append(INDEX_FOREGROUND)
  if kind == "faiss":
    stored = np.load(os.path.join(index_dir, INDEX_EMB)).astype(np.float32)  # the vectors queries read back
    approx, ann_record = ann.build(stored / np.linalg.norm(stored, axis=1, keepdims=True), faiss_factory,
                                   faiss_probe)
    index_files.replace_file(index_dir, ann.ANN_FILE, lambda f: f.write(ann.serialize(approx)))
    written.append(ann.ANN_FILE)
  # a former part model's or faiss index's files, format 2 names
  for stale in {INDEX_FOREGROUND, ann.ANN_FILE, "paths.txt", "skipped.txt"} - set(written):
    if os.path.exists(os.path.join(index_dir, stale)):
      os.remove(os.path.join(index_dir, stale))
  meta = {"format_version": index_files.FORMAT_VERSION, "workdir": ckpt_lib.resolve_dir(workdir),
          "checkpoint": run.checkpoint, "checkpoint_choice": checkpoint, "fingerprint": fp, "images_root": root, "num_images": len(rows),
          "num_skipped": len(bad), "dim": fp["dim"], "method": run.options.model.name,
          "image_size": list(image_size), "context_length": int(data.context_length),
          "layout": layout.to_json(),
          "sha256": {n: index_files.file_sha256(os.path.join(index_dir, n)) for n in written}}
  if dataset:
    meta["dataset"] = dataset
  meta["kind"] = kind
  if ann_record:
    meta["ann"] = ann_record
  index_files.save_json(index_dir, INDEX_META, meta)
  logging.info("Indexed %d images (%d encoded now, %d skipped) into %s", len(rows), len(kept), len(bad), index_dir)
  return dict(meta, num_encoded=len(kept), skipped=bad)
