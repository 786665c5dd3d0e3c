"""Throughput of the CLIP tokenizer (captions/s, tokens/s) and the tf.data train/eval pipelines (images/s).

Images are synthetic JPEGs sized like CUHK-PEDES crops (about 100×250 px, smooth content plus noise); captions are
random person descriptions. Run: .venv/bin/python benchmarks/input_pipeline.py [--what=all|tokenizer|pipeline]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

from tpsearch_jax.configs import base
from tpsearch_jax.models.clip import tokenizer

WORDS = ("a the woman man young old girl boy wearing with and in on of is has carrying holding walking black white "
         "red blue green yellow grey gray dark light pink purple brown orange long short sleeve sleeved shirt t-shirt "
         "jacket coat pants trousers jeans shorts skirt dress shoes sneakers boots backpack bag handbag umbrella hair "
         "ponytail glasses hat cap striped plaid checked left right hand shoulder, . her his she he they "
         "there's isn't knee-length 2 3").split()
Rec = collections.namedtuple("Rec", "pid image_id image_path caption")


def captions(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, rng.integers(15, 45))).capitalize() + "." for _ in range(n)]


def bench_tokenizer(n: int) -> dict[str, float]:
  texts = captions(n)
  fresh = tokenizer.ClipTokenizer()
  t0 = time.perf_counter()
  ids = fresh.tokenize(texts)
  cold = time.perf_counter() - t0
  t0 = time.perf_counter()
  fresh.tokenize(texts)
  warm = time.perf_counter() - t0
  t0 = time.perf_counter()
  for t in texts:
    tokenizer.clean(t)
  clean = time.perf_counter() - t0
  tokens = int(((ids > 0) & (ids < tokenizer.MASK_ID)).sum())
  out = {"captions": n, "bpe_tokens": tokens, "captions_per_s_cold": n / cold, "tokens_per_s_cold": tokens / cold,
         "captions_per_s_warm": n / warm, "tokens_per_s_warm": tokens / warm, "cleaning_share_warm": clean / warm}
  for k, v in out.items():
    print(f"tokenizer {k:>22}: {v:,.2f}")
  return out


def make_jpegs(folder: str, n: int, seed: int = 0) -> list[str]:
  rng, paths = np.random.default_rng(seed), []
  for i in range(n):
    h, w = int(rng.integers(220, 290)), int(rng.integers(80, 120))
    coarse = rng.integers(0, 256, (12, 5, 3), np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"{i:05d}.jpg"))
    Image.fromarray(pixels).save(paths[-1], quality=90)
  return paths


def bench_pipeline(num_images: int, batch: int, steps: int, image_size: tuple[int, int],
                   parallel: int = -1) -> dict[str, float]:
  """images/s of the train and eval pipelines with ``parallel`` map calls and as many threads (-1: AUTOTUNE, all
  cores)."""
  from tpsearch_jax.data.pipeline.evaluation import eval_datasets  # noqa: PLC0415 - TF only for this part
  from tpsearch_jax.data.pipeline.training import train_iterator  # noqa: PLC0415 - TF only for this part

  cfg = base.get_config("irra").data  # the training recipe's data settings
  cfg.image_size, cfg.context_length, cfg.num_parallel_calls = image_size, 77, parallel
  cfg.num_threads = max(parallel, 0)  # a private pool of that many threads; 0 = TF's shared pool
  with tempfile.TemporaryDirectory() as tmp:
    paths = make_jpegs(tmp, num_images)
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
    texts = captions(2 * num_images, seed=1)
    records = [Rec(i // 4, i // 2, paths[i // 2], texts[i]) for i in range(2 * num_images)]
    t0 = time.perf_counter()
    it = train_iterator(records, cfg, batch, seed=0)
    next(it)
    build = time.perf_counter() - t0
    for _ in range(3):
      next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
      next(it)
    train = steps * batch / (time.perf_counter() - t0)
    train_cpu = steps * batch / (time.process_time() - c0)
    split = collections.namedtuple("S", "name image_pids image_paths caption_pids captions")(
        "test", np.arange(num_images), paths, np.arange(2 * num_images) // 2, texts)
    images, _ = eval_datasets(split, cfg, batch)
    next(iter(images))
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(int(b["valid"].sum()) for b in images)
    evaluation = n / (time.perf_counter() - t0)
    evaluation_cpu = n / (time.process_time() - c0)
  out = {"jpeg_kib": kb, "build_and_first_batch_s": build, "train_images_per_s": train,
         "train_images_per_cpu_s": train_cpu, "eval_images_per_s": evaluation, "eval_images_per_cpu_s": evaluation_cpu}
  for k, v in out.items():
    print(f"pipeline {k:>24}: {v:,.1f}")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--what", choices=("all", "tokenizer", "pipeline"), default="all")
  parser.add_argument("--captions", type=int, default=20000)
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--image_size", type=int, nargs=2, default=(384, 128))
  parser.add_argument("--parallel_calls", default="-1",
                      help="comma-separated num_parallel_calls (= threads) to sweep, -1 = AUTOTUNE on all cores")
  args = parser.parse_args()
  print(f"host: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  if args.what in ("all", "tokenizer"):
    bench_tokenizer(args.captions)
  if args.what in ("all", "pipeline"):
    for n in (int(x) for x in args.parallel_calls.split(",")):
      print(f"num_parallel_calls {n}:")
      out = bench_pipeline(args.num_images, args.batch, args.steps, tuple(args.image_size), n)
      if n > 0:
        print(f"pipeline {'train_images_per_s_per_thread':>24}: {out['train_images_per_s'] / n:,.1f}")


if __name__ == "__main__":
  main()
