"""The benchmark's flags and run: per-method train/eval sections, then metrics and search; writes the outputs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

import jax

from tpsearch_jax import bench
from tpsearch_jax.bench import flops
from tpsearch_jax.bench import eval as eval_bench
from tpsearch_jax.bench import metrics as metrics_bench
from tpsearch_jax.bench import profile
from tpsearch_jax.bench import search as search_bench
from tpsearch_jax.bench import train as train_bench
from tpsearch_jax.bench.presets import DATASET_SIZES, PRESETS, Preset, dataset_size, method_config
from tpsearch_jax.bench.records import Results, device_meta
from tpsearch_jax.training.options import Options, run_options

SECTIONS = ("train", "eval", "metrics", "search")
_SIZE_HELP = f"of {','.join(DATASET_SIZES)} or QUERIESxGALLERYxIDS"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The CLI flags; unknown ``--skip`` sections and ``--*_sizes`` are rejected (SystemExit)."""
  p = argparse.ArgumentParser(prog="python -m tpsearch_jax.benchmark", description=bench.__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                 help="auto = full on GPU/TPU, small on CPU")
  p.add_argument("--methods", default="irra,fmfa,pcc,combined,clip,pcc_paper_vit,pcc_paper_rn50",
                 help="comma-separated method presets")
  p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
  p.add_argument("--batch_size", type=int, default=None, help="global train batch (default: preset)")
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU")
  p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=False, help="rematerialise blocks")
  p.add_argument("--mlm_head", default=None, choices=["masked", "full"],
                 help="MLM vocabulary projection at the labelled positions or everywhere (default: the config's)")
  p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=False,
                 help="shard params and optimizer state over the devices")
  p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"],
                 help="attention implementation; auto = cudnn on GPU in bf16 (falls back to xla), else xla")
  p.add_argument("--steps", type=int, default=None, help="train steps per timing window")
  p.add_argument("--windows", type=int, default=None, help="timing windows (median reported) for train, encode, search")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps after compilation")
  p.add_argument("--eval_batch_size", type=int, default=None)
  p.add_argument("--eval_batches", type=int, default=None, help="batches per encoding-throughput window")
  p.add_argument("--eval_sizes", default=None, help=f"end-to-end evaluations, {_SIZE_HELP}")
  p.add_argument("--metrics_sizes", default=None, help=f"retrieval-metric timings, {_SIZE_HELP}")
  p.add_argument("--metrics_repeats", type=int, default=1)
  p.add_argument("--metrics_dim", type=int, default=None, help="embedding width (default: 512, 64 for ci)")
  p.add_argument("--metrics_block_size", type=int, default=None,
                 help="queries per metric block for both variants (default: the metric's / config.eval.block_size)")
  p.add_argument("--search_rows", type=int, default=None, help="index size")
  p.add_argument("--search_query_batch", type=int, default=None)
  p.add_argument("--search_batches", type=int, default=None)
  p.add_argument("--search_k", type=int, default=10)
  p.add_argument("--search_block", type=int, default=65536, help="index rows scored per block")
  p.add_argument("--search_dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--profile_dir", default=None, help="trace a few train steps per method here; prints the top ops")
  p.add_argument("--profile_steps", type=int, default=3)
  p.add_argument("--profile_top", type=int, default=15)
  p.add_argument("--config_file", default=None,
                 help="Python file with get_config(method) (default: tpsearch_jax.configs.base)")
  p.add_argument("--out", default=None, help="write the JSON records here")
  p.add_argument("--markdown", default=None, help="also write the Markdown table here")
  args = p.parse_args(argv)
  unknown = set(filter(None, args.skip.split(","))) - set(SECTIONS)
  if unknown:
    p.error(f"--skip: unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
  for flag in ("eval_sizes", "metrics_sizes"):
    for size in filter(None, (getattr(args, flag) or "").split(",")):
      try:
        dataset_size(size)
      except ValueError as e:
        p.error(f"--{flag}: {e}")
  return args


def _resolve_attention(args) -> str:
  if args.attention != "auto":
    return args.attention
  accel = jax.default_backend() == "gpu"
  bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and accel)
  return "cudnn" if accel and bf16 else "xla"


def run(args: argparse.Namespace) -> Results:
  """Runs the selected sections; returns the collected results (also printed as they come)."""
  backend = jax.default_backend()
  preset_name = args.preset if args.preset != "auto" else ("small" if backend == "cpu" else "full")
  preset = PRESETS[preset_name]
  skip = set(filter(None, args.skip.split(",")))
  methods = [m for m in args.methods.split(",") if m]
  meta = device_meta()
  meta.update(preset=preset_name, preset_description=preset.description, argv=sys.argv[1:],
              methods=methods, skip=sorted(skip))
  results = Results(meta)
  print(f"tpsearch_jax benchmark — preset {preset_name}: {preset.description}")
  print(f"device {meta['device']} × {meta['num_devices']} ({meta['platform']}), host {meta['hardware']}")
  if backend == "cpu":
    print("CPU run: timings are for this host only; MFU and device memory are not available.")
  peak = flops.peak_flops(meta["device"], "bfloat16")
  results.add("device/peak_flops", peak, "FLOP/s", {"device_kind": meta["device"], "dtype": "bfloat16"},
              "dense peak per device used for MFU" if peak else "unknown for this device: MFU n/a")

  attention = _resolve_attention(args)
  configs = [method_config(method, preset, args, attention) for method in methods]
  options = [run_options(c) for c in configs]
  if not {"train", "eval"} <= skip:
    for config, opts in zip(configs, options):
      _bench_method(config, opts, results, preset, args, skip)
  if configs:
    batch_sizes = [int(c.train.batch_size) for c in configs]
    results.add_table("Analytic FLOPs per train step (forward by component)",
                      train_bench.flops_table(options, batch_sizes))
    results.extras["flops"] = {o.model.name: {"batch_size": b, **flops.train_step_flops(o, b).grouped()}
                               for o, b in zip(options, batch_sizes)}
  if "metrics" not in skip:
    print("\n[metrics]", flush=True)
    metrics_bench.bench_metrics(results, preset, args)
  if "search" not in skip:
    print("\n[search]", flush=True)
    search_bench.bench_search(results, preset, args)
  return results


def _bench_method(config, options: Options, results: Results, preset: Preset, args, skip: set[str]) -> None:
  """The train (+ profile) and eval sections of one method (``config`` and its ``run_options``), on one setup."""
  print(f"\n[{config.model.name}]", flush=True)
  s = train_bench.setup_with_fallback(config, options, compile_now="train" not in skip,
                                      auto=args.attention == "auto")
  if "train" not in skip:
    train_bench.bench_train(s, results, preset, args)
    if args.profile_dir:
      profile.profile_train(s, results, args)
  if "eval" not in skip:
    eval_bench.bench_eval(s, results, preset, args)


def write_outputs(results: Results, args: argparse.Namespace) -> None:
  """Prints the Markdown table; writes the JSON records to ``--out`` and the table to ``--markdown`` when given."""
  text = results.markdown()
  print("\n" + text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results.to_json(), f, indent=2)
      f.write("\n")
    print(f"\nwrote {args.out}")
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
  """Parses ``argv``, runs the benchmark and writes its outputs → exit status 0."""
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  args = parse_args(argv)
  write_outputs(run(args), args)
  return 0
