"""A retrieval example of a trained run as a PNG: test queries (hard ones first), the top-k test images of each,
the ground-truth person framed green, others red.

    python -m tpsearch_jax.study.example --workdir=/tmp/tpsearch_synthetic --out=docs/demo_retrieval.png
"""

from __future__ import annotations

import argparse
import sys

import jax  # noqa: F401  (imported before the eval pipeline, which brings TensorFlow)
import numpy as np

from tpsearch_jax.data import annotations
from tpsearch_jax.data.synthetic import hard_subset
from tpsearch_jax.search import grid
from tpsearch_jax.training import runs


def top_k(workdir: str, split: str = "test", k: int = 5):
  """→ (EvalSplit, scores float32 [Q, G], hard query indices) of the run's selected checkpoint on ``split``."""
  run = runs.load_run(workdir, "auto")
  ann = annotations.read_annotations(run.options.data.name, run.options.data.root)
  data = ann.split(split)
  return data, split_scores(run, data), hard_subset.hard_queries(ann.root, data)


def split_scores(run, data) -> np.ndarray:
  """A loaded run (``runs.load_run``) + EvalSplit → float32 [Q, G] caption-image scores of its embeddings."""
  from tpsearch_jax.data.pipeline.evaluation import eval_datasets  # TensorFlow: only when a run is scored

  images, texts = eval_datasets(data, run.options.data, int(run.config.eval.batch_size))

  def encode(batches, key, method):
    return np.concatenate([np.asarray(run.model.apply({"params": run.params}, b[key], method=method))[b["valid"]]
                           for b in batches])

  return encode(texts, "caption_ids", "encode_texts") @ encode(images, "images", "encode_images").T


def render(workdir: str, out: str, num_queries: int = 4, k: int = 5, seed: int = 0) -> str:
  """Writes the PNG of ``num_queries`` test queries (half of them from the hard subset) → its path."""
  data, scores, hard = top_k(workdir, k=k)
  rng = np.random.default_rng(seed)
  easy = np.setdiff1d(np.arange(len(data.captions)), hard)
  picks = list(rng.choice(hard, num_queries // 2, replace=False)) + list(
      rng.choice(easy, num_queries - num_queries // 2, replace=False))
  rows = []
  for q in picks:
    order = np.argsort(-scores[q], kind="stable")[:k]
    cells = [grid.Cell(data.image_paths[g], r + 1, float(scores[q, g]),
                       mark=bool(data.image_pids[g] == data.caption_pids[q]), label=f"id {data.image_pids[g]}")
             for r, g in enumerate(order)]
    tag = "hard" if q in set(hard.tolist()) else "other"
    rows.append((f"[{tag}, id {data.caption_pids[q]}] {data.captions[q]}", cells))
  grid.render_grid(rows).save(out)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m tpsearch_jax.study.example", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--num_queries", type=int, default=4)
  ap.add_argument("--k", type=int, default=5)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  print(render(args.workdir, args.out, args.num_queries, args.k, args.seed))
  return 0


if __name__ == "__main__":
  sys.exit(main())
