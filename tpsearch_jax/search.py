"""Search your own images with a trained model: index a folder once, then query it with sentences.

    python -m tpsearch_jax.search index --workdir=RUN --images=DIR --index=INDEX_DIR
    python -m tpsearch_jax.search query --index=INDEX_DIR --text="a woman in a red coat with a black backpack" --k=10

``index`` encodes every image under ``--images`` (recursively; jpg/jpeg/png/bmp/webp) with the run's model
(``RUN/config.json`` + its best, else last, checkpoint) and writes ``embeddings.npy`` (float16, L2-normalised),
``paths.txt`` and ``index.json``. ``query`` encodes each sentence and prints the top-k images with cosine scores
(exact top-k over the index sharded on all devices; ``--html`` also writes a page of thumbnails). Neither command
imports TensorFlow: images are decoded and resized with PIL.
"""

from __future__ import annotations

import concurrent.futures
import html
import json
import os
import sys
from typing import Sequence

import numpy as np
from absl import app, flags, logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INDEX_META, INDEX_EMB, INDEX_PATHS = "index.json", "embeddings.npy", "paths.txt"

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


def find_images(root: str) -> list[str]:
  """Sorted absolute paths of the image files under ``root`` (recursive)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--images={root}: not a folder")
  found = []
  for folder, _, files in os.walk(root):
    found.extend(os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
  if not found:
    raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return sorted(os.path.abspath(p) for p in found)


def load_image(path: str, image_size: tuple[int, int]) -> np.ndarray:
  """File → float32 [H, W, 3] CLIP-normalised (RGB, bilinear resize as the evaluation pipeline does)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tpsearch_jax.data.image_stats import CLIP_MEAN, CLIP_STD  # pylint: disable=g-import-not-at-top
  h, w = image_size
  with Image.open(path) as im:
    x = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), np.float32) / 255.0
  return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def load_run(workdir: str, checkpoint: str = "auto"):
  """RUN folder → (config, model, params on the default mesh, checkpoint folder used)."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tpsearch_jax import checkpointing as ckpt_lib  # pylint: disable=g-import-not-at-top
  from tpsearch_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from tpsearch_jax import train  # pylint: disable=g-import-not-at-top
  from tpsearch_jax.models import build_model  # pylint: disable=g-import-not-at-top

  workdir = ckpt_lib.resolve_dir(workdir)
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: --workdir must be a training run folder")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  model = build_model(config)
  mesh = shd.create_mesh()
  abstract, _, _ = train.abstract_train_state(config, model, mesh, train.example_batch(config))
  checkpointer = ckpt_lib.Checkpointer(workdir, async_save=False)
  try:
    found = checkpointer.restore_choice(abstract, checkpoint)
  finally:
    checkpointer.close()
  if found is None:
    raise FileNotFoundError(f"no {checkpoint} checkpoint in {workdir} "
                            f"(looked in {', '.join(ckpt_lib.CHOICES[checkpoint])})")
  state, _, source = found
  logging.info("Loaded %s", source)
  return config, model, mesh, state.params, source


def _encoder(model, mesh, method: str):
  import jax  # pylint: disable=g-import-not-at-top
  from tpsearch_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda p, x: model.apply({"params": p}, x, method=method), out_shardings=shd.replicated(mesh))


def _padded_batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def encode_images(model, mesh, params, paths: Sequence[str], image_size, batch_size: int, skip_bad: bool):
  """Image files → (float32 [n, D] L2-normalised embeddings, kept paths). Bad files raise or are skipped+logged."""
  from tpsearch_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  batch_size = -(-batch_size // mesh.size) * mesh.size
  encode = _encoder(model, mesh, "encode_images")
  h, w = image_size
  embs, kept, bad = [], [], []
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
    for start, stop in _padded_batches(len(paths), batch_size):
      chunk = paths[start:stop]
      futures = [pool.submit(load_image, p, image_size) for p in chunk]
      images, ok = [], []
      for p, fut in zip(chunk, futures):
        try:
          images.append(fut.result())
          ok.append(p)
        except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for bad files)
          if not skip_bad:
            raise ValueError(f"cannot read image {p}: {e} (use --skip_bad to skip unreadable files)") from e
          bad.append((p, str(e)))
      if not images:
        continue
      x = np.zeros((batch_size, h, w, 3), np.float32)
      x[:len(images)] = np.stack(images)
      out = encode(params, shd.to_global({"images": x}, mesh)["images"])
      embs.append(np.asarray(out)[:len(images)])
      kept.extend(ok)
      logging.log_every_n_seconds(logging.INFO, "encoded %d / %d images", 10, stop, len(paths))
  if bad:
    logging.warning("skipped %d unreadable image(s); first: %s", len(bad), bad[:5])
  if not embs:
    raise ValueError("no readable images to index")
  return np.concatenate(embs).astype(np.float32), kept


def encode_texts(model, mesh, params, sentences: Sequence[str], context_length: int) -> np.ndarray:
  """Sentences → float32 [n, D] L2-normalised embeddings."""
  from tpsearch_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from tpsearch_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  ids = tokenizer.tokenize(list(sentences), context_length=context_length)
  n = len(ids)
  padded = -(-n // mesh.size) * mesh.size
  ids = np.concatenate([ids, np.zeros((padded - n, ids.shape[1]), ids.dtype)]) if padded > n else ids
  out = _encoder(model, mesh, "encode_texts")(params, shd.to_global({"ids": ids}, mesh)["ids"])
  return np.asarray(out)[:n].astype(np.float32)


def build(workdir: str, images: str, index_dir: str, checkpoint: str = "auto", batch_size: int = 64,
          skip_bad: bool = False) -> dict:
  """Encodes the images under ``images`` with the run in ``workdir`` and writes the index; returns its metadata."""
  config, model, mesh, params, source = load_run(workdir, checkpoint)
  paths = find_images(images)
  image_size = tuple(config.data.image_size)
  emb, kept = encode_images(model, mesh, params, paths, image_size, batch_size, skip_bad)
  os.makedirs(index_dir, exist_ok=True)
  np.save(os.path.join(index_dir, INDEX_EMB), emb.astype(np.float16))
  with open(os.path.join(index_dir, INDEX_PATHS), "w") as f:
    f.write("\n".join(kept) + "\n")
  meta = {"workdir": os.path.abspath(workdir), "checkpoint": source, "checkpoint_choice": checkpoint,
          "images_root": os.path.abspath(images), "num_images": len(kept), "num_skipped": len(paths) - len(kept),
          "dim": int(emb.shape[1]), "method": config.model.name, "image_size": list(image_size)}
  with open(os.path.join(index_dir, INDEX_META), "w") as f:
    json.dump(meta, f, indent=2)
  logging.info("Indexed %d images (%d skipped) into %s", len(kept), len(paths) - len(kept), index_dir)
  return meta


def query(index_dir: str, sentences: Sequence[str], k: int = 10):
  """Top-k gallery images per sentence → list of [(path, cosine)] lists (best first)."""
  from tpsearch_jax import search_index  # pylint: disable=g-import-not-at-top
  meta_path = os.path.join(index_dir, INDEX_META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: build the index first (python -m tpsearch_jax.search index)")
  with open(meta_path) as f:
    meta = json.load(f)
  with open(os.path.join(index_dir, INDEX_PATHS)) as f:
    paths = f.read().splitlines()
  emb = np.load(os.path.join(index_dir, INDEX_EMB)).astype(np.float32)
  if len(paths) != emb.shape[0]:
    raise ValueError(f"{index_dir}: {len(paths)} paths but {emb.shape[0]} embeddings — rebuild the index")
  config, model, mesh, params, _ = load_run(meta["workdir"], meta["checkpoint_choice"])
  q = encode_texts(model, mesh, params, sentences, int(config.data.context_length))
  index = search_index.build_index(emb, np.arange(len(paths)), mesh=mesh, dtype=np.float32)
  k = min(k, len(paths))
  scores, ids = search_index.search_batched(index, q, k, query_batch=max(mesh.size, 8))
  return [[(paths[i], float(s)) for s, i in zip(srow, irow)] for srow, irow in zip(scores, ids)]


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
