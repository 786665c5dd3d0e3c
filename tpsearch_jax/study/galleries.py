"""Held-out galleries: a trained synthetic_pedes run scored on many independent small galleries of unseen people.

A 20-identity test split is one draw of gallery difficulty (its attribute oracle, ``hard_subset.attribute_oracle``,
ranges from 84 to 92 between draws), so one run's test R1 says as much about the draw as about the model. This
generates a pool of fresh identities once, with a generator seed other than the training data's, so that no person
is shared with training. It splits the pool into galleries of ``ids_per_gallery`` identities, ``repeats`` times over,
keeping twin pairs together as the generator's splits do. For each gallery it computes the run's metrics and the
attribute oracle's R1 ceiling, then reports their mean and standard error over the galleries of one partition:

    python -m tpsearch_jax.study.galleries --workdir=/tmp/tpsearch_synthetic --pool=/tmp/tpsearch_data/heldout_pool
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tpsearch_jax.data import annotations
from tpsearch_jax.data.synthetic import generator, hard_subset
from tpsearch_jax.metrics import grouped_retrieval_metrics
from tpsearch_jax.study.example import split_scores
from tpsearch_jax.training import runs

POOL_IDS = 440  # 200 identities each in the pool's val and test splits (the generator needs a train share)
POOL_FRACTIONS = (0.1, 0.45, 0.45)
POOL_SEED = 7  # the demo data uses seed 0
IDS_PER_GALLERY = 20  # as the demo's val / test splits: 80 gallery images
REPEATS = 5
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def families(identities: Sequence[Mapping[str, Any]], split: str) -> list[list[int]]:
  """attributes.json identities + split → the split's identity ids grouped by twin pair ([id] or [id, twin])."""
  in_split = {p["id"] for p in identities if p["split"] == split}
  partner = {}  # the twin_of link either way: the generator's ids are shuffled, so it may point to a larger id
  for p in identities:
    if p["id"] in in_split and p["twin_of"] in in_split:
      partner[p["id"]], partner[p["twin_of"]] = p["twin_of"], p["id"]
  groups: dict[int, list[int]] = {}
  for pid in in_split:
    groups.setdefault(min(pid, partner.get(pid, pid)), []).append(pid)
  return [sorted(g) for _, g in sorted(groups.items())]


def partition(groups: Sequence[Sequence[int]], ids_per_gallery: int, rng: np.random.Generator) -> list[list[int]]:
  """Identity families → galleries of at least ``ids_per_gallery`` ids, families whole, in a random order; the
  last, short remainder is dropped."""
  galleries, current = [], []
  for i in rng.permutation(len(groups)):
    current = current + list(groups[i])
    if len(current) >= ids_per_gallery:
      galleries.append(sorted(current))
      current = []
  return galleries


def gallery_rows(scores: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray,
                 galleries: Sequence[Sequence[int]], queries: np.ndarray | None = None) -> list[dict[str, float]]:
  """scores [Q, G], query_pids [Q], gallery_pids [G], galleries (lists of ids) → per gallery the retrieval metrics
  of its own queries against its own images only (other images scored below all of them, in one metrics pass).
  ``queries``: bool [Q], the queries to score (default: all); a gallery with none of them gets no row."""
  gallery_of = {pid: i for i, ids in enumerate(galleries) for pid in ids}
  query_gallery = np.asarray([gallery_of.get(int(p), -1) for p in query_pids])
  image_gallery = np.asarray([gallery_of.get(int(p), -2) for p in gallery_pids])
  kept = query_gallery >= 0  # the captions of identities left out of every gallery are not scored
  if queries is not None:
    kept &= np.asarray(queries, bool)
  own = query_gallery[kept, None] == image_gallery[None, :]
  masked = np.where(own, scores[kept], np.min(scores) - 1.0).astype(np.float32)
  rows = grouped_retrieval_metrics(masked, np.asarray(query_pids)[kept], gallery_pids, query_gallery[kept])
  return [{k: rows[i][k] for k in METRICS} | {"queries": rows[i]["num_queries"],
                                              "gallery": int((image_gallery == i).sum())}
          for i in range(len(galleries)) if i in rows]


def oracle_r1(fits: np.ndarray, identity_ids: Sequence[int], caption_pids: np.ndarray, ids: Sequence[int]) -> float:
  """The attribute oracle's expected R1 (%) on one gallery: fits bool [C, I] (``hard_subset.fit_matrix`` of the
  split's captions × identities ``identity_ids``), caption_pids [C] → the mean of 1/m over the gallery's captions,
  m = how many of the gallery's identities fit the caption."""
  members, own = np.isin(identity_ids, ids), np.isin(caption_pids, ids)
  return hard_subset.oracle_r1(fits[np.ix_(own, members)].sum(axis=1))


def summarise(rows: Sequence[Mapping[str, float]], repeats: int) -> dict[str, dict[str, float]]:
  """Per-gallery rows (``repeats`` partitions of one pool) → {metric: {"mean", "sem"}}. The standard error counts
  one partition's galleries as the independent samples (a partition reuses every identity once)."""
  independent = len(rows) / repeats
  out = {}
  for k in rows[0]:
    values = np.asarray([r[k] for r in rows], np.float64)
    out[k] = {"mean": float(values.mean()), "sem": float(values.std(ddof=1) / np.sqrt(independent))}
  return out


def ensure_pool(root: str, num_ids: int = POOL_IDS, seed: int = POOL_SEED) -> str:
  """Generates the identity pool into ``root`` unless ``root`` already holds one (its attributes.json) → root."""
  if not os.path.isfile(os.path.join(root, "attributes.json")):
    generator.generate(root, num_ids=num_ids, seed=seed, split_fractions=POOL_FRACTIONS)
  return root


def evaluate_run(workdir: str, pool: str, ids_per_gallery: int = IDS_PER_GALLERY, repeats: int = REPEATS,
                 checkpoint: str = "auto") -> dict[str, Any]:
  """A run folder + pool folder → {"model": summary, "hard": summary of the hard queries, "hard_queries": n,
  "oracle": summary, "galleries": n, "repeats", "step", "checkpoint"}."""
  run = runs.load_run(workdir, checkpoint)
  ann = annotations.read_annotations("synthetic_pedes", pool)
  identities = hard_subset.read_identities(pool)

  model_rows, hard_rows, oracle_rows, num_hard = [], [], [], 0
  for split_index, split in enumerate(("val", "test")):
    data = ann.split(split)
    scores = split_scores(run, data)
    in_split = [p for p in identities if p["split"] == split]
    fits = hard_subset.fit_matrix(in_split, data.captions)
    identity_ids = [p["id"] for p in in_split]
    groups = families(identities, split)
    # A twin pair stays in one gallery, so a query that is hard in its split for its twin is hard in its gallery.
    hard = np.asarray([bool(r) for r in hard_subset.hard_reasons(identities, split, data.captions,
                                                                 data.caption_pids)], bool)
    num_hard += int(hard.sum())
    for r in range(repeats):
      galleries = partition(groups, ids_per_gallery, np.random.default_rng([r, split_index]))
      model_rows += gallery_rows(scores, data.caption_pids, data.image_pids, galleries)
      hard_rows += gallery_rows(scores, data.caption_pids, data.image_pids, galleries, queries=hard)
      oracle_rows += [{"R1": oracle_r1(fits, identity_ids, data.caption_pids, g)} for g in galleries]
  return {"model": summarise(model_rows, repeats), "hard": summarise(hard_rows, repeats), "hard_queries": num_hard,
          "oracle": summarise(oracle_rows, repeats), "galleries": len(model_rows), "repeats": repeats,
          "step": run.step, "checkpoint": run.checkpoint}


def format_summary(result: Mapping[str, Any]) -> str:
  """evaluate_run's result → a few lines: mean ± standard error per metric, and the oracle."""
  model = result["model"]
  cells = ", ".join(f"{k} {model[k]['mean']:.2f} ± {model[k]['sem']:.2f}" for k in METRICS)
  return (f"{result['galleries']} galleries ({result['repeats']} partitions), {model['gallery']['mean']:.0f} images "
          f"each, step {result['step']}: {cells}; hard queries ({result['hard_queries']}) R1 "
          f"{result['hard']['R1']['mean']:.2f} ± {result['hard']['R1']['sem']:.2f}; attribute oracle R1 "
          f"{result['oracle']['R1']['mean']:.2f} ± {result['oracle']['R1']['sem']:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
  """CLI: prints the summary and writes it as JSON (``--out``, default WORKDIR/heldout_galleries.json)."""
  ap = argparse.ArgumentParser(prog="python -m tpsearch_jax.study.galleries", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a synthetic_pedes training run folder")
  ap.add_argument("--pool", required=True, help="folder of the held-out identity pool (generated when missing)")
  ap.add_argument("--checkpoint", default="auto", help="auto | best | last | a checkpoint folder")
  ap.add_argument("--ids_per_gallery", type=int, default=IDS_PER_GALLERY)
  ap.add_argument("--repeats", type=int, default=REPEATS, help="random partitions of the pool")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  result = evaluate_run(args.workdir, ensure_pool(args.pool), args.ids_per_gallery, args.repeats, args.checkpoint)
  out = args.out or os.path.join(args.workdir, "heldout_galleries.json")
  with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  print(format_summary(result))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
