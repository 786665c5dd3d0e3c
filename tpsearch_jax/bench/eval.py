"""Eval section: encoding throughput and end-to-end test evaluations with the project's ``evaluate.Evaluator``."""

from __future__ import annotations

import time

import jax
import numpy as np

from tpsearch_jax import batch as batch_lib
from tpsearch_jax import evaluate
from tpsearch_jax.bench.presets import Preset, config_summary, dataset_size, sizes
from tpsearch_jax.bench.records import Results, add_peak_memory, median_time
from tpsearch_jax.bench.train import MethodSetup


def _eval_batches(kind: str, n: int, batch: int, ids: int, template: np.ndarray, rng) -> list[dict]:
  """``n`` rows in padded batches of ``batch`` (the pipeline's ``valid`` mask); every batch shares ``template``."""
  pids = rng.permutation(np.arange(n) % ids).astype(np.int32)
  out = []
  for start in range(0, n, batch):
    rows = min(batch, n - start)
    p = np.zeros((batch,), np.int32)
    p[:rows] = pids[start:start + rows]
    out.append({kind: template, "pids": p, "valid": np.arange(batch) < rows})
  return out


def bench_eval(s: MethodSetup, results: Results, preset: Preset, args) -> None:
  """Encoding throughput (images/s, texts/s) and end-to-end test evaluations with the project's Evaluator."""
  config = s.config
  eb = int(config.eval.batch_size)
  cfg = config_summary(config, s.options, eval_batch_size=eb)
  cfg.pop("batch_size")
  name = f"eval/{config.model.name}"
  evaluator = evaluate.Evaluator(s.model, s.mesh, s.shardings.params, block_size=int(config.eval.block_size))
  rng = np.random.default_rng(1)
  h, w = config.data.image_size
  images = rng.standard_normal((eb, h, w, 3), dtype=np.float32)  # [eb, H, W, 3]
  ids = batch_lib.fake_train_batch(s.options.batch_options, eb, seed=1)["caption_ids"]  # [eb, L]
  params = s.state.params
  nb = int(args.eval_batches or preset.eval_batches)
  windows = int(args.windows or preset.windows)
  for kind, template, unit in (("images", images, "images/s"), ("caption_ids", ids, "texts/s")):
    batches = _eval_batches(kind, nb * eb, eb, max(nb * eb // 4, 1), template, rng)
    t0 = time.perf_counter()
    jax.block_until_ready(evaluator.encode(params, batches[:1], kind)[0])
    first = time.perf_counter() - t0
    if nb > 1:
      jax.block_until_ready(evaluator.encode(params, batches, kind)[0])  # the gather for nb batches compiles here

    def run(batches=batches, kind=kind):
      jax.block_until_ready(evaluator.encode(params, batches, kind)[0])

    t, _ = median_time(run, windows)
    label = "images" if kind == "images" else "texts"
    results.add(f"{name}/encode_{label}_per_sec", nb * eb / t, unit, cfg,
                f"{nb} batch(es) of {eb} incl. host→device copies; first batch with compile {first:.2f} s")

  chosen = sizes(args.eval_sizes, preset.eval_sizes)
  for size in chosen:
    n_img, n_txt, n_ids = dataset_size(size)
    img_b = _eval_batches("images", n_img, eb, n_ids, images, rng)
    txt_b = _eval_batches("caption_ids", n_txt, eb, n_ids, ids, rng)
    t0 = time.perf_counter()
    evaluator.evaluate(params, img_b, txt_b)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    row = evaluator.evaluate(params, img_b, txt_b)
    total = time.perf_counter() - t0
    if row["num_queries"] != n_txt or row["num_gallery"] != n_img:
      raise RuntimeError(f"{name}/{size}: evaluated {row['num_queries']}×{row['num_gallery']}, expected "
                         f"{n_txt}×{n_img}")
    results.add(f"{name}/{size}_test_eval_time", total, "s", dict(cfg, images=n_img, texts=n_txt),
                f"encode {n_img:,} images + {n_txt:,} captions + metrics (warm; first call {first:.2f} s)")
  if chosen:
    add_peak_memory(results, f"{name}/peak_memory", cfg,
                    "process-wide peak_bytes_in_use after the evaluations (includes training unless --skip=train)")
